"""Model FLOPs per training image (fvcore, attention included) and the peak rate to compare against."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import torch
from torch import nn

logger = logging.getLogger("dinov3_us")

# Dense bf16 peak TFLOP/s of common training GPUs (vendor figures, no sparsity).
GPU_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def _sdpa_flops(inputs, outputs) -> float:
    q, k = inputs[0].type().sizes(), inputs[1].type().sizes()  # [B, heads, N, D], [B, heads, M, D]
    b, h, n, d = q
    m = k[2]
    return 2 * b * h * n * m * d  # q k^T and attn v, one multiply-add each (fvcore counts a MAC as 1 flop)


def forward_flops(module: nn.Module, *inputs) -> float:
    """fvcore's count (multiply-adds) of one forward of `module` on `inputs`, SDPA attention included."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return float(analysis.total())


@torch.no_grad()
def crop_forward_macs(model: nn.Module, cfg: Mapping) -> dict[str, float]:
    """Multiply-adds of one forward of the student on one crop: backbone on a global and on a local crop
    ("global", "local", no drop path) and the DINO head on one CLS token ("head")."""
    backbone = model.student.backbone
    crops, chans = cfg["crops"], cfg["student"]["in_chans"]
    g = torch.zeros(1, chans, crops["global_crops_size"], crops["global_crops_size"])
    loc = torch.zeros(1, chans, crops["local_crops_size"], crops["local_crops_size"])
    was_training = backbone.training
    backbone.eval()
    try:
        return {"global": forward_flops(backbone, g), "local": forward_flops(backbone, loc),
                "head": forward_flops(model.student.dino_head, torch.zeros(1, backbone.embed_dim))}
    finally:
        backbone.train(was_training)


def training_flops_per_image(model: nn.Module, cfg: Mapping) -> float:
    """FLOPs (2 x multiply-adds) per image of one DINOv3 step: student fwd+bwd (3x) on all crops, teacher fwd.

    Counted on an unsharded copy-free path: the student backbone on one global and one local crop
    (x its crop counts) and the heads on the CLS tokens; iBOT head patches are a small correction ignored.
    """
    macs = crop_forward_macs(model, cfg)
    n_local = cfg["crops"]["local_crops_number"]
    student = 2 * (macs["global"] + macs["head"]) + n_local * (macs["local"] + macs["head"])
    teacher = 2 * (macs["global"] + macs["head"])
    return 2.0 * (3 * student + teacher)  # MACs -> FLOPs


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024,
                           seconds: float = 0.5) -> float:
    """A short square-matmul benchmark: the practical peak of `device` in `dtype` (TFLOP/s)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size**3 * n / (time.perf_counter() - start) / 1e12


def peak_tflops(device: torch.device, configured: float = 0.0) -> tuple[float, str]:
    """The peak to compute MFU against and where it came from (config, GPU table, or a measured matmul)."""
    if configured > 0:
        return configured, "runtime.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16_TFLOPS.items():
            if key in name:
                return value, f"{name} dense bf16 datasheet"
        return measured_matmul_tflops(device, torch.bfloat16, 4096), f"{name} measured bf16 matmul"
    return measured_matmul_tflops(device), "measured fp32 matmul on this CPU"

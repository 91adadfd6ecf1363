"""The CUDA path in one short script (CPU fallback where no GPU): attention backends, FSDP2 + bf16 training
steps with throughput, MFU and peak memory, and a checkpoint save/resume.

    bash bench/gpu_check.sh            # on a CUDA machine: ViT-S/16 and ViT-B/16; on CPU: the tiny recipe
    python bench/gpu_check.py --compile --steps 10 --output bench/results/gpu_check_h100.json

1. Backbone (ViT-S/16 on CUDA, vit_test on CPU) with every attention backend that runs here (xformers
   only where its kernel runs): max output difference to `matmul`, and forward time of each.
2. A DINOv3 training step (SSLMetaArch, FSDP2 on a 1-process group, bf16 parameters / fp32 reduce,
   optionally torch.compile of the blocks): img/s, achieved TFLOP/s, MFU against the GPU's dense bf16
   datasheet peak (or a measured matmul on CPU), peak memory.
3. Checkpoint: save a sharded checkpoint, load it into a fresh model, check a tensor, time both.
Designed to finish within 8 minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train_step import run
from stamp import stamp

from dinov3_us.checkpointer import CheckpointManager, ModelOptimizerState
from dinov3_us.configs import load_config
from dinov3_us.distributed import init_distributed
from dinov3_us.fsdp import parallelize_meta_arch
from dinov3_us.hub import dinov3_vits16
from dinov3_us.layers.attention_backends import available_backends
from dinov3_us.models.vision_transformer import DinoVisionTransformer
from dinov3_us.train.flops import measured_matmul_tflops, peak_tflops
from dinov3_us.train.ssl_meta_arch import SSLMetaArch

REPO = Path(__file__).resolve().parents[1]


def _timed(fn, device: torch.device, repeats: int = 10) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def check_attention(device: torch.device) -> dict:
    """Same outputs and the speed of every attention backend available on `device`."""
    if device.type == "cuda":
        model, x = dinov3_vits16(), torch.randn(32, 3, 224, 224, device=device)
    else:
        model = DinoVisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)
        model.init_weights()
        x = torch.randn(4, 3, 64, 64)
    model = model.to(device).eval()
    outputs, seconds = {}, {}
    for backend in available_backends(device):
        model.set_attention_backend(backend)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs[backend] = model.forward_features(x)["x_norm_patchtokens"].float()
            seconds[backend] = _timed(lambda: model.forward_features(x), device)
    ref = outputs["matmul"]
    return {"backends": list(outputs), "max_abs_diff_vs_matmul": {k: float((v - ref).abs().max()) for k, v in
                                                                outputs.items()},
            "forward_seconds": {k: round(v, 5) for k, v in seconds.items()}, "batch": list(x.shape)}


def check_checkpoint(device: torch.device, recipe_overrides: list[str]) -> dict:
    """Save a sharded checkpoint of a fresh model, load it into another, compare, time both."""
    cfg = load_config(None, recipe_overrides + [f"runtime.device={device.type}"])
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = SSLMetaArch(cfg)
        model.init_weights()
        parallelize_meta_arch(model, cfg, device)
        models.append(model)
    with tempfile.TemporaryDirectory() as tmp:
        manager = CheckpointManager(tmp, period=1, max_to_keep=2, keep_every=0)
        opts = [torch.optim.AdamW(m.get_params_groups()) for m in models]
        start = time.perf_counter()
        manager.save(1, {"model": ModelOptimizerState(models[0], opts[0])})
        saved = time.perf_counter() - start
        start = time.perf_counter()
        manager.load({"model": ModelOptimizerState(models[1], opts[1])})
        loaded = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    a = models[0].teacher.backbone.cls_token.full_tensor()
    b = models[1].teacher.backbone.cls_token.full_tensor()
    return {"save_seconds": round(saved, 3), "load_seconds": round(loaded, 3), "bytes": size,
            "restored_equal": bool(torch.equal(a, b))}


def main() -> int:
    """Run the three checks, print them, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time the step with torch.compile'd blocks")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    info = init_distributed("auto", "auto")
    device = info.device
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    peak, source = peak_tflops(device)
    peaks = {"bf16": peak, "fp32": peak if cuda else measured_matmul_tflops(device)}
    print(f"device: {name}; bf16 peak {peak:.1f} TFLOP/s ({source})", flush=True)
    result = {"stamp": stamp(), "device": name, "peak_tflops_bf16": peak, "peak_source": source,
              "attention": check_attention(device), "train_steps": []}
    print(json.dumps(result["attention"], indent=1), flush=True)
    recipes = ["vits16", "vitb16"] if cuda else ["tiny"]
    for recipe in recipes:
        for compiled in ([False, True] if args.compile else [False]):
            extra = ("train.compile=true",) if compiled else ()
            row = run(recipe, "bf16", args.steps, peaks, device, extra) | {"compile": compiled}
            result["train_steps"].append(row)
            print(json.dumps(row), flush=True)
    ckpt_recipe = ["student.arch=vit_small", "student.in_chans=1"] if cuda else \
        ["student.arch=vit_test", "student.patch_size=8", "dino.head_n_prototypes=256", "ibot.head_n_prototypes=256"]
    result["checkpoint"] = check_checkpoint(device, ckpt_recipe)
    print(json.dumps(result["checkpoint"]), flush=True)
    default = REPO / "bench" / "results" / f"gpu_check_{'cuda' if cuda else 'cpu_fallback'}.json"
    out = Path(args.output) if args.output else default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-step throughput and model FLOP utilisation (MFU) of the DINOv3 step, on this machine.

Runs the real step (SSLMetaArch under FSDP2 in a 1-process group, AdamW, EMA) on synthetic collated
batches, for the tiny test recipe and the ViT-S/16 recipe (2 x 224 + 8 x 96 crops, 65,536 prototypes),
in fp32 and with bf16 parameters, side by side in one run. MFU = achieved FLOP/s (fvcore count, attention
included, x3 for the student's backward, + teacher forward) / a matmul rate measured here in the same
dtype. Prints a table and writes bench/results/train_step.json.

    python bench/bench_train_step.py [--steps 3] [--configs tiny vits16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dinov3_us.configs import load_config  # noqa: E402
from dinov3_us.data.masking import MaskingGenerator  # noqa: E402
from dinov3_us.distributed import init_distributed  # noqa: E402
from dinov3_us.fsdp import parallelize_meta_arch  # noqa: E402
from dinov3_us.train.flops import measured_matmul_tflops, training_flops_per_image  # noqa: E402
from dinov3_us.train.optimizer import build_adamw  # noqa: E402
from dinov3_us.train.schedules import build_schedulers  # noqa: E402
from dinov3_us.train.ssl_meta_arch import SSLMetaArch  # noqa: E402
from dinov3_us.train.step import train_step  # noqa: E402

CPU = torch.device("cpu")
RECIPES = {
    "tiny": (REPO / "configs/train/tiny_cpu.yaml", []),
    "vits16": (None, ["student.arch=vit_small", "student.in_chans=1", "student.n_storage_tokens=4",
                      "train.batch_size_per_gpu=4", "student.drop_path_rate=0.1"]),
    "vitb16": (REPO / "configs/train/vitb16_fetalus.yaml", ["train.batch_size_per_gpu=32"]),
}


def synthetic_batch(cfg, device: torch.device = CPU) -> dict:
    """A collated batch of random crops with real iBOT masks (the data pipeline is benchmarked elsewhere)."""
    crops, b, c = cfg.crops, cfg.train.batch_size_per_gpu, cfg.student.in_chans
    side = crops.global_crops_size // cfg.student.patch_size
    gen = MaskingGenerator((side, side), max_num_patches=0.5 * side * side)
    masks = torch.stack([torch.from_numpy(gen(int(0.3 * side * side), generator=i)).flatten() for i in range(2 * b)])
    idx = masks.flatten().nonzero().flatten()
    return {"collated_global_crops": torch.randn(2 * b, c, crops.global_crops_size, crops.global_crops_size,
                                                 device=device),
            "collated_local_crops": torch.randn(crops.local_crops_number * b, c, crops.local_crops_size,
                                                crops.local_crops_size, device=device),
            "collated_masks": masks, "mask_indices_list": idx,
            "masks_weight": (1 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks],
            "n_masked_patches": torch.tensor([idx.numel()]), "upperbound": idx.numel(), "global_batch_size": b}


def run(name: str, dtype: str, steps: int, peaks: dict, device: torch.device = CPU,
        extra: tuple[str, ...] = ()) -> dict:
    """Time `steps` training steps (after one warm-up step) of recipe `name` with `dtype` parameters."""
    path, overrides = RECIPES[name]
    cfg = load_config(path, overrides + [f"runtime.device={device.type}", f"compute_precision.param_dtype={dtype}",
                                         *extra])
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    model.init_weights()
    flops = training_flops_per_image(model, cfg)
    parallelize_meta_arch(model, cfg, device)
    model.train()
    optimizer = build_adamw(model.get_params_groups())
    schedules, batch = build_schedulers(cfg), synthetic_batch(cfg, device)
    train_step(model, optimizer, batch, schedules, 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for it in range(1, steps + 1):
        train_step(model, optimizer, batch, schedules, it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    images = cfg.train.batch_size_per_gpu / seconds
    achieved = images * flops / 1e12
    return {"recipe": name, "param_dtype": dtype, "batch_size": cfg.train.batch_size_per_gpu,
            "crops": f"2x{cfg.crops.global_crops_size} + {cfg.crops.local_crops_number}x{cfg.crops.local_crops_size}",
            "prototypes": cfg.dino.head_n_prototypes, "seconds_per_step": round(seconds, 4),
            "images_per_second": round(images, 3), "gflops_per_image": round(flops / 1e9, 3),
            "achieved_tflops": round(achieved, 4), "peak_tflops_measured": round(peaks[dtype], 4),
            "mfu": round(achieved / peaks[dtype], 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def main() -> int:
    """Run every (recipe, dtype) pair, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["tiny", "vits16"], choices=list(RECIPES))
    parser.add_argument("--output", default=str(REPO / "bench/results/train_step.json"))
    args = parser.parse_args()
    init_distributed("cpu", "gloo")
    cpu = torch.device("cpu")
    peaks = {"fp32": measured_matmul_tflops(cpu, torch.float32, 1024, 2.0),
             "bf16": measured_matmul_tflops(cpu, torch.bfloat16, 1024, 2.0)}
    rows = [run(name, dtype, args.steps, peaks) for name in args.configs for dtype in ("fp32", "bf16")]
    print(f"{'recipe':8} {'dtype':5} {'img/s':>8} {'s/step':>8} {'GFLOP/img':>10} {'TFLOP/s':>8} {'MFU':>6}")
    for r in rows:
        print(f"{r['recipe']:8} {r['param_dtype']:5} {r['images_per_second']:8.2f} {r['seconds_per_step']:8.3f} "
              f"{r['gflops_per_image']:10.2f} {r['achieved_tflops']:8.4f} {r['mfu']:6.1%}")
    result = {"benchmark": "train_step", "command": "python bench/bench_train_step.py " + " ".join(sys.argv[1:]),
              "device": "cpu", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "matmul_peak_tflops": {k: round(v, 4) for k, v in peaks.items()}, "results": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

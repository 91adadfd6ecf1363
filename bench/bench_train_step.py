"""Training-step throughput, model FLOP utilisation (MFU) and the student backbone's share of the matmul rate.

Runs what `tools/train.py` runs, recipe by recipe (the shipped config files, unchanged: their batch size,
in_chans, drop path, iBOT masking through the trainer's own collate, gradient clipping): SSLMetaArch under
`parallelize_meta_arch` in a process group of one (FSDP2; plain modules in fp32, as the trainer),
`build_adamw`, the schedules, `train_step`. The crops are random (the data
pipeline has its own bench); every step gets its own batch and masks. Reports, per recipe and parameter
dtype, the median step time over `--steps` timed steps after `--warmup` (>= 2) untimed ones, with min-max.

- MFU: model FLOPs of a step (fvcore count, attention included; student forward + backward = 3x its
  forward, teacher forward; drop path's savings not subtracted) / median step time / a matmul rate
  measured in this process in the same dtype.
- Student backbone utilisation (bf16 rows): the student backbone alone, forward + backward on one
  step's multi-crop batch (global crops masked, local crops, as in the step; drop path off so that the
  counted FLOPs are the executed ones), as a fraction of the bf16 matmul rate measured in this process.

- `--compile`: every (recipe, dtype) pair again with train.compile=true (blocks compiled in place; the
  compilation happens in the warm-up steps and, for the backbone-alone passes, in their 2 warm-up passes).

    python bench/bench_train_step.py [--steps 5] [--warmup 3] [--configs tiny vits16] [--dtypes fp32 bf16]
        [--compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from stamp import stamp

from dinov3_us.configs import load_config
from dinov3_us.data.pipeline import build_collate_fn
from dinov3_us.distributed import init_distributed
from dinov3_us.fsdp import parallelize_meta_arch
from dinov3_us.train.flops import crop_forward_macs, measured_matmul_tflops, training_flops_per_image
from dinov3_us.train.optimizer import build_adamw
from dinov3_us.train.schedules import build_schedulers
from dinov3_us.train.ssl_meta_arch import SSLMetaArch
from dinov3_us.train.step import train_step

REPO = Path(__file__).resolve().parents[1]

CPU = torch.device("cpu")
RECIPES = {  # the shipped training configs, as users run them
    "tiny": REPO / "configs/train/tiny_cpu.yaml",
    "small": REPO / "configs/train/small_cpu.yaml",  # make demo's recipe
    "vits16": REPO / "configs/train/vits16_fetalus.yaml",
    "vitb16": REPO / "configs/train/vitb16_fetalus.yaml",
}


def collated_batches(cfg, n_batches: int, seed: int = 1000) -> list[dict]:
    """`n_batches` batches of random crops (the config's sizes, counts and in_chans) through the trainer's collate."""
    crops, b, c = cfg.crops, cfg.train.batch_size_per_gpu, cfg.student.in_chans
    g, loc, n_local = crops.global_crops_size, crops.local_crops_size, crops.local_crops_number
    batches = []
    for i in range(n_batches):
        gen = torch.Generator().manual_seed(seed + i)
        samples = [{"global_crops": [torch.randn(c, g, g, generator=gen) for _ in range(2)],  # 2 x [C, G, G]
                    "local_crops": [torch.randn(c, loc, loc, generator=gen) for _ in range(n_local)]}  # [C, L, L]
                   for _ in range(b)]
        # collated_global_crops [2B, C, G, G], collated_local_crops [n_local * B, C, L, L], masks [2B, (G/p)^2]
        batches.append(build_collate_fn(cfg, generator=seed + i)(samples))
    return batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spread(seconds: list[float]) -> dict:
    return {"median": round(statistics.median(seconds), 4), "min": round(min(seconds), 4),
            "max": round(max(seconds), 4)}


def backbone_utilisation(model, batch: dict, macs: dict, cfg, peak_bf16: float, device: torch.device,
                         repeats: int = 3) -> dict:
    """Student backbone forward + backward on one step's crops (drop path off): seconds, TFLOP/s, share of peak."""
    backbone = model.student.backbone
    blocks = list(backbone.blocks)
    saved = [blk.sample_drop_ratio for blk in blocks]
    n_g = 2
    b = batch["collated_local_crops"].shape[0] // cfg.crops.local_crops_number
    inputs = [batch["collated_global_crops"].to(device), batch["collated_local_crops"].to(device)]
    masks = [batch["collated_masks"].to(device), None]
    flops = 2.0 * 3 * b * (n_g * macs["global"] + cfg.crops.local_crops_number * macs["local"])
    times = []
    try:
        for blk in blocks:
            blk.sample_drop_ratio = 0.0
        for i in range(repeats + 2):  # 2 warm-up passes
            _sync(device)
            start = time.perf_counter()
            g_out, l_out = backbone(inputs, masks=masks, is_training=True)
            (g_out["x_prenorm"].float().square().mean() + l_out["x_prenorm"].float().square().mean()).backward()
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
    finally:
        for blk, ratio in zip(blocks, saved):
            blk.sample_drop_ratio = ratio
        model.student.zero_grad(set_to_none=True)
    seconds = statistics.median(times)
    achieved = flops / seconds / 1e12
    return {"backbone_seconds": _spread(times), "backbone_gflop": round(flops / 1e9, 1),
            "backbone_tflops": round(achieved, 4), "backbone_share_of_bf16_matmul": round(achieved / peak_bf16, 4)}


def run(name: str, dtype: str, steps: int, peaks: dict, device: torch.device = CPU, extra: tuple[str, ...] = (),
        warmup: int = 3) -> dict:
    """Time `steps` training steps (after `warmup` untimed ones) of recipe `name` with `dtype` parameters."""
    if warmup < 2:
        raise ValueError(f"warmup must be >= 2, got {warmup}")
    cfg = load_config(RECIPES[name], [f"runtime.device={device.type}", f"compute_precision.param_dtype={dtype}",
                                      *extra])
    compiled = bool(cfg.train.compile)
    torch._dynamo.reset()  # each row compiles afresh: rows share Block.forward, and its recompile limit is 8
    torch.manual_seed(cfg.train.seed)
    model = SSLMetaArch(cfg)
    model.init_weights()
    flops = training_flops_per_image(model, cfg)
    macs = crop_forward_macs(model, cfg)
    parallelize_meta_arch(model, cfg, device)
    model.train()
    optimizer = build_adamw(model.get_params_groups(), betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2))
    schedules = build_schedulers(cfg)
    batches = collated_batches(cfg, warmup + steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for it, batch in enumerate(batches):
        _sync(device)
        start = time.perf_counter()
        train_step(model, optimizer, batch, schedules, it, clip_grad=cfg.optim.clip_grad)
        _sync(device)
        if it >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    b = cfg.train.batch_size_per_gpu
    achieved = b / seconds * flops / 1e12
    row = {"recipe": name, "config": str(RECIPES[name].relative_to(REPO)), "param_dtype": dtype, "batch_size": b,
           "in_chans": cfg.student.in_chans, "drop_path_rate": cfg.student.drop_path_rate,
           "clip_grad": cfg.optim.clip_grad, "mask_sample_probability": cfg.ibot.mask_sample_probability,
           "crops": f"2x{cfg.crops.global_crops_size} + {cfg.crops.local_crops_number}x{cfg.crops.local_crops_size}",
           "prototypes": cfg.dino.head_n_prototypes, "compile": compiled, "warmup": warmup, "steps": steps,
           "seconds_per_step": _spread(times), "images_per_second": round(b / seconds, 3),
           "gflops_per_image": round(flops / 1e9, 3), "achieved_tflops": round(achieved, 4),
           "peak_tflops_measured": round(peaks[dtype], 4), "mfu": round(achieved / peaks[dtype], 4),
           "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda"
           else None}
    if dtype == "bf16":
        row |= backbone_utilisation(model, batches[-1], macs, cfg, peaks["bf16"], device)
    return row


def main() -> int:
    """Run every (recipe, dtype) pair, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 2)")
    parser.add_argument("--configs", nargs="+", default=["tiny", "vits16"], choices=list(RECIPES))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="also time each pair with train.compile=true")
    parser.add_argument("--output", default=str(REPO / "bench/results/train_step.json"))
    args = parser.parse_args()
    if args.warmup < 2 or args.steps < 1:
        print(f"error: --warmup must be >= 2 and --steps >= 1 (got {args.warmup}, {args.steps})", file=sys.stderr)
        return 2
    init_distributed("cpu", "gloo")
    peaks = {"fp32": measured_matmul_tflops(CPU, torch.float32, 1024, 2.0),
             "bf16": measured_matmul_tflops(CPU, torch.bfloat16, 1024, 2.0)}
    rows = [run(name, dtype, args.steps, peaks, warmup=args.warmup, extra=extra)
            for name in args.configs for dtype in args.dtypes
            for extra in ([(), ("train.compile=true",)] if args.compile else [()])]
    print(f"{'recipe':8} {'dtype':5} {'compile':7} {'img/s':>8} {'s/step (min-max)':>22} {'GFLOP/img':>10} {'MFU':>6} "
          f"{'backbone/matmul':>16}")
    for r in rows:
        s = r["seconds_per_step"]
        share = f"{r['backbone_share_of_bf16_matmul']:.1%}" if "backbone_share_of_bf16_matmul" in r else "-"
        print(f"{r['recipe']:8} {r['param_dtype']:5} {'on' if r['compile'] else 'off':7} {r['images_per_second']:8.2f} "
              f"{s['median']:8.3f} ({s['min']:.3f}-{s['max']:.3f}) {r['gflops_per_image']:10.2f} {r['mfu']:6.1%} "
              f"{share:>16}")
    result = {"benchmark": "train_step", "stamp": stamp(), "device": "cpu",
              "matmul_peak_tflops": {k: round(v, 4) for k, v in peaks.items()}, "results": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

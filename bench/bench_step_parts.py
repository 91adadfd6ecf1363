"""The parts of the DINOv3 step this project rewrote, each against the official formula, side by side.

- Sinkhorn-Knopp on iBOT's [masked patches, prototypes] teacher logits: ours (stabilised once, scaled by
  matrix-vector products) vs the official iteration written out in eager PyTorch (exp, then element-wise
  divisions; the official code compiles it where torch.compile runs).
- The soft-target cross-entropy of the iBOT loss, forward + backward: ours (row chunks, lean backward) vs
  `sum(t * log_softmax(s / T))` with autograd.
- AdamW on the student of a ViT-S/16 run with 65,536-prototype heads (66M parameters), sharded by FSDP2
  (DTensor, a process group of one) with its parameter groups, as in training: the fused kernel
  (`build_adamw`) vs torch's default on this device (the for-loop on CPU, which pays DTensor dispatch per
  parameter and per operation).
- Drop path's gather of the kept samples, forward + backward, on ViT-S/16's global-crop tokens [16, 201, 384]
  keeping 11 (drop path 0.3): `x.index_select(0, idx)` (ours, `SelfAttentionBlock`; its backward is an
  index_add) vs `x[idx]` (the official; its backward is an accumulating index_put). ViT-S runs 24 per step.
Interleaved repeats in one process, median of the fastest half; also the largest difference of the results.

    python bench/bench_step_parts.py [--rows 507] [--prototypes 65536] [--repeats 5] [--arch vit_small]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from stamp import stamp

from dinov3_us.configs import load_config
from dinov3_us.distributed import destroy_distributed, init_distributed
from dinov3_us.fsdp import parallelize_meta_arch
from dinov3_us.loss.cross_entropy import soft_cross_entropy
from dinov3_us.loss.sinkhorn_knopp import sinkhorn_knopp
from dinov3_us.train.optimizer import build_adamw
from dinov3_us.train.ssl_meta_arch import SSLMetaArch

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def official_sinkhorn(logits: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """The official iteration (one process), as a reference for time and values."""
    q = torch.exp(logits.float() / temp).t()  # [K, B]
    k, b = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def official_cross_entropy(t: torch.Tensor, s: torch.Tensor, temp: float) -> torch.Tensor:
    """The official iBOT `lossfunc`."""
    return torch.sum(t.float() * F.log_softmax(s.float() / temp, dim=-1), dim=-1)


def _interleaved(fns: dict, repeats: int) -> dict:
    times = {name: [] for name in fns}
    for rep in range(repeats + 1):  # the first round warms up
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(sorted(t)[: max(1, len(t) // 2)]), 5) for name, t in times.items()}


def main() -> int:
    """Time the parts, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=507, help="masked patches (iBOT rows)")
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--arch", default="vit_small", help="student.arch of the AdamW part")
    parser.add_argument("--output", default=str(REPO / "bench/results/step_parts.json"))
    args = parser.parse_args()
    if min(args.rows, args.prototypes, args.repeats) < 1:
        print("error: --rows, --prototypes and --repeats must be >= 1", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    shape = (args.rows, args.prototypes)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        logits = (0.3 * torch.randn(shape, generator=gen)).to(dtype)  # [M, K] teacher logits
        secs = _interleaved({"official_formula": lambda x=logits: official_sinkhorn(x, 0.07),
                             "ours": lambda x=logits: sinkhorn_knopp(x, 0.07, 3)}, args.repeats)
        diff = float((official_sinkhorn(logits, 0.07) - sinkhorn_knopp(logits, 0.07, 3)).abs().max())
        results[f"sinkhorn_knopp_{str(dtype)[6:]}"] = {"seconds": secs, "max_abs_diff": diff}

        targets = torch.softmax(torch.randn(shape, generator=gen) / 0.07, dim=-1)  # [M, K]
        student = (0.3 * torch.randn(shape, generator=gen)).to(dtype)

        def fwd_bwd(fn, s=student, t=targets):
            x = s.clone().requires_grad_(True)
            fn(t, x, 0.1).sum().backward()
            return x.grad

        secs = _interleaved({"official_formula": lambda: fwd_bwd(official_cross_entropy),
                             "ours": lambda: fwd_bwd(soft_cross_entropy)}, args.repeats)
        diff = float((fwd_bwd(official_cross_entropy).float() - fwd_bwd(soft_cross_entropy).float()).abs().max())
        results[f"soft_cross_entropy_fwd_bwd_{str(dtype)[6:]}"] = {"seconds": secs, "max_abs_grad_diff": diff}

        tokens = torch.randn(16, 201, 384, generator=gen).to(dtype)  # [2B, N, D] global-crop tokens
        kept = torch.randperm(16, generator=gen)[:11]

        def gather_fwd_bwd(fn, x=tokens, idx=kept):
            x = x.clone().requires_grad_(True)
            fn(x, idx).float().square().sum().backward()
            return x.grad

        def index_select(x, idx):
            return x.index_select(0, idx)

        def indexing(x, idx):
            return x[idx]

        secs = _interleaved({"official_indexing": lambda: gather_fwd_bwd(indexing),
                             "ours_index_select": lambda: gather_fwd_bwd(index_select)}, args.repeats)
        diff = float((gather_fwd_bwd(indexing).float() - gather_fwd_bwd(index_select).float()).abs().max())
        results[f"drop_path_gather_fwd_bwd_{str(dtype)[6:]}"] = {"seconds": secs, "max_abs_grad_diff": diff}

    init_distributed("cpu", "gloo")
    cfg = load_config(None, [f"student.arch={args.arch}", "student.n_storage_tokens=4", "runtime.device=cpu",
                             f"dino.head_n_prototypes={args.prototypes}", f"ibot.head_n_prototypes={args.prototypes}"])
    model = SSLMetaArch(cfg)
    model.init_weights()
    parallelize_meta_arch(model, cfg, torch.device("cpu"))
    params = list(model.student.parameters())  # DTensors
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    fused, default = build_adamw(model.get_params_groups()), torch.optim.AdamW(model.get_params_groups())
    for opt in (fused, default):
        for group in opt.param_groups:
            group["lr"] = 1e-4
    secs = _interleaved({"default_" + ("foreach" if params[0].is_cuda else "for_loop"): default.step,
                         "fused": fused.step}, args.repeats)
    results["adamw_step"] = {"seconds": secs, "parameters": sum(p.numel() for p in params)}

    for name, row in results.items():
        print(f"{name:34} " + ", ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in row["seconds"].items()))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "step_parts", "stamp": stamp(), "rows": args.rows,
                               "prototypes": args.prototypes, "repeats": args.repeats,
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())

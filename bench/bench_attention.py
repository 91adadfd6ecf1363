"""Attention kernels side by side, forward + backward, on the token counts of DINOv3 crops: the evidence for
`attention.backend=auto`'s choice per device and dtype (`dinov3_us/layers/attention_backends.py`).

Every available backend (sdpa = PyTorch's dispatcher, on CPU its flash kernel; matmul = ours; xformers where it
runs) on [batch, heads, tokens, 64] q, k, v for a ViT-S/16 global crop (224 px: 201 tokens with 4 storage
tokens) and local crop (96 px: 41 tokens), in each dtype; interleaved repeats in one process, median of the
fastest half; also the largest output difference to a float64 reference. Prints a table and writes JSON.

    python bench/bench_attention.py [--repeats 5] [--output bench/results/attention_cpu.json]
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

from dinov3_us.layers.attention_backends import (
    available_backends,
    resolve_backend,
    scaled_dot_product_attention,
)

REPO = Path(__file__).resolve().parents[1]

SHAPES = {"global 224px (ViT-S/16, 11 of 16 crops kept)": (11, 6, 201, 64),
          "local 96px (ViT-S/16, 44 of 64 crops kept)": (44, 6, 41, 64)}


def _time_fwd_bwd(backend: str, q, k, v, grad) -> float:
    start = time.perf_counter()
    out = scaled_dot_product_attention(q, k, v, backend)
    out.backward(grad)
    if q.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(device: torch.device, dtype: torch.dtype, shape: tuple, repeats: int) -> dict:
    """Seconds (median of the fastest half of `repeats` interleaved runs) and error per backend."""
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(shape, generator=gen) for _ in range(3)]
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    ref = torch.softmax(base[0].double() @ base[1].double().transpose(-2, -1) / shape[-1] ** 0.5, -1) @ base[2].double()
    backends = available_backends(device)
    times: dict[str, list[float]] = {b: [] for b in backends}
    errors = {}
    for rep in range(repeats + 1):  # the first round warms up
        for backend in backends:
            q, k, v = (t.to(device, dtype).requires_grad_(True) for t in base)
            seconds = _time_fwd_bwd(backend, q, k, v, grad)
            if rep:
                times[backend].append(seconds)
            else:
                with torch.no_grad():
                    errors[backend] = float((scaled_dot_product_attention(q, k, v, backend).double().cpu()
                                             - ref).abs().max())
    fastest = {b: sorted(t)[: max(1, len(t) // 2)] for b, t in times.items()}
    return {"seconds": {b: round(statistics.median(t), 5) for b, t in fastest.items()},
            "max_abs_error_vs_float64": {b: round(e, 5) for b, e in errors.items()},
            "auto_picks": resolve_backend("auto", torch.zeros(1, device=device, dtype=dtype))}


def main() -> int:
    """Measure every (dtype, crop) pair on this machine's device, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for name, shape in SHAPES.items():
            row = {"dtype": str(dtype).removeprefix("torch."), "crop": name, "shape": list(shape)}
            row |= measure(device, dtype, shape, args.repeats)
            rows.append(row)
            ms = ", ".join(f"{b} {s * 1e3:.1f} ms" for b, s in row["seconds"].items())
            print(f"{row['dtype']:8} {name:45} {ms}  (auto: {row['auto_picks']})", flush=True)
    out = Path(args.output or REPO / f"bench/results/attention_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "attention", "stamp": stamp(), "device": device.type,
                               "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the checkpoint checksums cost on a ViT-B/16 training checkpoint (student + teacher + AdamW state).

    python bench/bench_checkpoint_checksum.py [--arch vit_base] [--repeats 3]

One process, side by side in one run: a save with `CheckpointManager` (DCP, fsync, CRC-32 of every file
by the rank that wrote it), the CRC-32 pass alone over the committed files (what a save adds, and
what a resume or a conversion reads once to verify: `damaged_files`), and a load. Page-cached
files, so the CRC figures are the CPU cost; on a cold network filesystem reading dominates both.
Writes `bench/results/checkpoint_checksum.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from stamp import stamp
from torch import nn

from dinov3_us.checkpointer import CheckpointManager, ModelOptimizerState, damaged_files
from dinov3_us.configs import get_default_config
from dinov3_us.models import build_model

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Build the state, time save / CRC / load, print and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_base")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "checkpoint_checksum.json")
    args = p.parse_args(argv)
    student_cfg = get_default_config().student.to_dict() | {"arch": args.arch, "patch_size": 16}
    student, teacher, _ = build_model(student_cfg)
    model = nn.ModuleDict({"student": student, "teacher": teacher})
    for param in model.parameters():
        nn.init.normal_(param, std=0.02)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    for param in student.parameters():  # one step: the optimizer's exp_avg / exp_avg_sq exist
        param.grad = torch.randn_like(param) * 1e-3
    opt.step()
    states = {"model": ModelOptimizerState(model, opt)}
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        manager = CheckpointManager(Path(tmp) / "ckpt", period=1, max_to_keep=1, keep_every=0)
        for it in range(1, args.repeats + 1):
            start = time.perf_counter()
            ckpt = manager.save(it, states)
            save_s = time.perf_counter() - start
            nbytes = sum(f.stat().st_size for f in ckpt.iterdir())
            start = time.perf_counter()
            assert damaged_files(ckpt) == []
            crc_s = time.perf_counter() - start
            start = time.perf_counter()
            manager.load(states)
            load_s = time.perf_counter() - start
            rows.append({"save_s": round(save_s, 3), "crc32_pass_s": round(crc_s, 3), "load_s": round(load_s, 3),
                         "checkpoint_gib": round(nbytes / 2**30, 3)})
            print(f"save {save_s:6.2f} s (includes a CRC pass)   CRC-32 pass {crc_s:5.2f} s   load {load_s:6.2f} s   "
                  f"{nbytes / 2**30:.2f} GiB", flush=True)
    best = {k: min(r[k] for r in rows) for k in ("save_s", "crc32_pass_s", "load_s")}
    result = {"stamp": stamp(), "arch": args.arch,
              "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "checkpoint_gib": rows[0]["checkpoint_gib"], "runs": rows, "best": best,
              "crc_share_of_save": round(best["crc32_pass_s"] / best["save_s"], 3),
              "crc_share_of_load": round(best["crc32_pass_s"] / best["load_s"], 3),
              "crc_gib_per_s": round(rows[0]["checkpoint_gib"] / best["crc32_pass_s"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("checkpoint_gib", "best", "crc_share_of_save", "crc_gib_per_s")}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers of the evaluation tests: run a tool in a subprocess (one thread), write an easy masked shard set."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
BLOB_CLASSES = ["left", "centre", "right"]


def run_tool(tool: str, *args, torchrun: int = 0, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run `tools/<tool>` with `args` (optionally under `torchrun --nproc_per_node N`), one thread per process."""
    script = str(REPO / "tools" / tool)
    if torchrun:
        torchrun_bin = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun_bin), "--standalone", f"--nproc_per_node={torchrun}", script]
    else:
        cmd = [sys.executable, script]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def write_blob_shards(root: Path, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """An easy labelled + masked set: a bright disk on speckle; class = the disk's side (left / centre / right).

    Each sample has `png`, `mask.png` (the disk, 0/255) and `json` ({label, patient}).
    """
    from dinov3_us.data.shards import write_shard

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    manifest = {"source": "blobs", "task": "side", "labels": BLOB_CLASSES, "counts": {}, "shards": {}}
    index = 0
    for split, n in counts.items():
        samples, per_class = [], {c: 0 for c in BLOB_CLASSES}
        for _ in range(n):
            label = index % 3
            cx = size * (0.25 + 0.25 * label) + rng.uniform(-1.5, 1.5)
            cy = size * 0.5 + rng.uniform(-3, 3)
            r = size * rng.uniform(0.16, 0.22)
            disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
            image = np.clip(rng.gamma(2.0, 20.0, (size, size)) + 150 * disk, 0, 255).astype(np.uint8)
            meta = {"label": BLOB_CLASSES[label], "patient": f"b{index // 2:04d}"}
            samples.append((f"blob_{index:05d}", {"png": _png(image), "mask.png": _png((255 * disk).astype(np.uint8)),
                                                  "json": json.dumps(meta).encode()}))
            per_class[BLOB_CLASSES[label]] += 1
            index += 1
        write_shard(root / f"{split}-000000.tar", samples)
        manifest["shards"][split] = [{"url": f"{split}-000000.tar", "n": n}]
        manifest["counts"][split] = per_class
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root

"""Decode + multi-crop throughput per worker: tar shards (the streaming loader) vs a plain folder of PNGs.

    python bench/bench_data_pipeline.py [--images DIR] [--num-images 192] [--repeats 3]

Same images (the PNG bytes are copied into the shards unchanged), same transform
(`DataAugmentationDINO` with the default config: 2 global crops 224 + 8 local crops 96 when it is
importable, else a plain resize, reported in the JSON), same per-sample seeds, one thread per worker
(as in DataLoader workers). "Per worker" = one process reading and transforming (`num_workers=0`);
the shard path is also timed with 2 DataLoader workers. Images: HC18's training set from
`../shared/data/hc18/training_set` when present (read-only; shards go to a temp folder under /tmp),
else synthetic speckle images. Writes `bench/results/data_pipeline.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from stamp import stamp

from dinov3_us.data.loader import make_data_loader
from dinov3_us.data.shards import write_shard

REPO = Path(__file__).resolve().parents[1]

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "hc18" / "training_set"


def make_transform():
    """(transform, description): DataAugmentationDINO with defaults, or a resize fallback."""
    try:
        from dinov3_us.data.augment import DataAugmentationDINO
    except ImportError:
        return (lambda im, generator=None: torch.from_numpy(np.asarray(im.resize((224, 224))).copy()),
                {"transform": "resize 224 (DataAugmentationDINO not importable)"})
    aug = DataAugmentationDINO.from_config({})
    return aug, {"transform": "DataAugmentationDINO.from_config({}) (defaults)", "global_crops": 2,
                 "global_crops_size": aug.global_crops_size, "local_crops_number": aug.local_crops_number,
                 "local_crops_size": aug.local_crops_size, "in_chans": aug.in_chans,
                 "global_crops_scale": list(getattr(aug.global_crop, "scale", ())),
                 "local_crops_scale": list(getattr(aug.local_crop, "scale", ()))}


def source_images(folder: Path, n: int, tmp: Path) -> tuple[list[Path], str]:
    """`n` PNG paths: HC18 images (not masks) when present, else synthetic ones written to `tmp`."""
    if folder.is_dir():
        paths = sorted(p for p in folder.glob("*.png") if "Annotation" not in p.name and "Mask" not in p.name)
        if paths:
            return paths[:n], str(folder)
    rng, out = np.random.default_rng(0), tmp / "synthetic"
    out.mkdir()
    for i in range(n):
        Image.fromarray((rng.gamma(1.0, 60, (540, 800))).clip(0, 255).astype(np.uint8)).save(out / f"syn_{i:04d}.png")
    return sorted(out.glob("*.png")), "synthetic 800x540 speckle"


def write_pool(paths: list[Path], out: Path, per_shard: int = 32) -> None:
    """The images' PNG bytes, unchanged, in shards + manifest."""
    out.mkdir()
    entries = []
    for s in range(0, len(paths), per_shard):
        chunk = paths[s : s + per_shard]
        samples = [(p.stem, {"png": p.read_bytes(), "json": json.dumps({"label": None}).encode()}) for p in chunk]
        name = f"train-{s // per_shard:06d}.tar"
        write_shard(out / name, samples)
        entries.append({"url": name, "n": len(chunk)})
    (out / "manifest.json").write_text(json.dumps({"source": "bench", "shards": {"train": entries}}))


def time_folder(paths, transform) -> float:
    """Samples/s reading the PNG files directly (decode to 'L', then transform with a seeded generator)."""
    t0 = time.perf_counter()
    for pos, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("L")
        if transform is not None:
            transform(im, generator=np.random.default_rng([0, pos]))
    return len(paths) / (time.perf_counter() - t0)


def time_shards(pool: Path, transform, workers: int) -> float:
    """Samples/s through `make_data_loader` (shuffled shards, decode, transform in the worker)."""
    loader = make_data_loader(str(pool), batch_size=8, num_workers=workers, transform=transform,
                              collate_fn=len, window_shards=4)
    t0 = time.perf_counter()
    n = sum(loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--num-images", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_pipeline.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_", dir="/tmp"))
    try:
        paths, origin = source_images(args.images, args.num_images, tmp)
        write_pool(paths, tmp / "pool")
        sizes = [Image.open(p).size for p in paths]
        png_mb = round(sum(p.stat().st_size for p in paths) / 2**20, 2)
        transform, crop_config = make_transform()
        runs = {}
        for name, tf in (("decode", None), ("decode_multicrop", transform)):
            for _ in range(args.repeats):  # interleaved, best of `repeats`
                for key, fn in ((f"{name}_folder", lambda tf=tf: time_folder(paths, tf)),
                                (f"{name}_shards", lambda tf=tf: time_shards(tmp / "pool", tf, 0))):
                    runs[key] = max(runs.get(key, 0.0), fn())
        runs["decode_multicrop_shards_2_workers_total"] = time_shards(tmp / "pool", transform, 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "stamp": stamp(),
        "samples_per_s_per_worker": {k: round(v, 2) for k, v in runs.items()},
        "shards_vs_folder": {n: round(runs[f"{n}_shards"] / runs[f"{n}_folder"], 3)
                             for n in ("decode", "decode_multicrop")},
        "images": {"source": origin, "count": len(paths), "mean_size_wh": np.mean(sizes, axis=0).round(1).tolist(),
                   "png_mb": png_mb},
        "crops": crop_config,
        "libraries": {"numpy": np.__version__, "pillow": Image.__version__},
        "torch_threads_per_worker": 1,
        "method": f"best of {args.repeats} interleaved passes; per worker = one process, num_workers=0",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result["samples_per_s_per_worker"].items():
        print(f"{key:45s} {value:9.2f} samples/s")
    print("shards / folder:", result["shards_vs_folder"], "->", args.out)


if __name__ == "__main__":
    main()

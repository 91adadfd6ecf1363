"""Reading samples out of tar shards: `dinov3_us.data.shards.read_samples` vs webdataset's tar iteration.

    python bench/bench_tar_reader.py [--images DIR] [--num-images 192] [--shard-size 32] [--repeats 7]

Why `dinov3_us.data.shards` reads tars itself (see its docstring): the loader asks a shard for the
positions one worker owns from the resume point on. Three access patterns, side by side in one run on
the same page-cached shards (written by our `write_shard` from HC18's PNGs when present, else
synthetic images): every position, every 4th position (one worker's share of 4), and the last quarter
(a resume). webdataset: `tar_file_iterator` + `group_by_keys` over the file, keeping the wanted
positions (it cannot skip without reading). Figures are samples per second, the best of `--repeats`.
Needs webdataset (`pip install -e .[test]`). Writes `bench/results/tar_reader.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_data_pipeline import DEFAULT_IMAGES, source_images
from stamp import stamp

from dinov3_us.data.shards import read_samples, write_shard

REPO = Path(__file__).resolve().parents[1]


def write_shards(paths: list[Path], shard_size: int, folder: Path) -> list[str]:
    """Shards of `shard_size` samples (`KEY.png`, `KEY.json`) under `folder`; their paths."""
    urls = []
    for start in range(0, len(paths), shard_size):
        url = str(folder / f"train-{start // shard_size:06d}.tar")
        write_shard(url, [(p.stem, {"png": p.read_bytes(), "json": b'{"label": null}'})
                          for p in paths[start:start + shard_size]])
        urls.append(url)
    return urls


def ours(urls: list[str], wanted: set[int]) -> int:
    """Samples read with our reader (by position; unwanted members are not read)."""
    n = 0
    for url in urls:
        found, error = read_samples(url, sorted(wanted))
        if error is not None:
            raise RuntimeError(f"{url}: {error}")
        n += len(found)
    return n


def webdataset_reader(urls: list[str], wanted: set[int]) -> int:
    """Samples kept from webdataset's iteration of every member."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    n = 0
    for url in urls:
        with open(url, "rb") as f:
            for i, _ in enumerate(group_by_keys(dict(d, __url__=url) for d in tar_file_iterator(f))):
                n += i in wanted
    return n


def best_rate(fn, urls: list[str], wanted: set[int], repeats: int) -> float:
    """Samples per second, best of `repeats`."""
    times, n = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn(urls, wanted)
        times.append(time.perf_counter() - start)
    return n / min(times)


def main(argv: list[str] | None = None) -> int:
    """Run the three patterns for both readers; print and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--num-images", type=int, default=192)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tar_reader.json")
    args = p.parse_args(argv)
    k = args.shard_size
    patterns = {"all positions": set(range(k)), "every 4th position (one worker of 4)": set(range(0, k, 4)),
                "last quarter (a resume)": set(range(k - k // 4, k))}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        paths, source = source_images(args.images, args.num_images, Path(tmp))
        urls = write_shards(paths, k, Path(tmp))
        rows = {}
        for name, wanted in patterns.items():
            a = best_rate(ours, urls, wanted, args.repeats)
            b = best_rate(webdataset_reader, urls, wanted, args.repeats)
            rows[name] = {"dinov3_us_samples_per_s": round(a), "webdataset_samples_per_s": round(b),
                          "ratio": round(a / b, 2)}
            print(f"{name:40s} ours {a:9.0f}/s   webdataset {b:9.0f}/s   x{a / b:.2f}", flush=True)
    import webdataset

    result = {"stamp": stamp(), "images": source, "num_images": len(paths), "shard_size": k, "repeats": args.repeats,
              "webdataset": webdataset.__version__, "patterns": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

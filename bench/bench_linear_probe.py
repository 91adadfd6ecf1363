"""Linear probe: cached features vs running the backbone every iteration, same grid, epochs, data and seeds.

    python bench/bench_linear_probe.py [--arch vit_small] [--image-size 64] [--epochs 30] [--threads 1]

Both protocols train the same grid of heads with `train_linear_grid` (same seeds, hence the same
batches in the same order, the same initialisation and the same per-epoch val scoring for early
stopping); they differ only in where a batch's features come from:
- cached: every split is embedded once (`extract_features`), then the heads read the in-memory cache;
- per-iteration: every training batch and every val/test pass decodes the images and runs the frozen
  backbone again (the official DINOv2/v3 loop, here without augmentation so that the data are equal).
Data: HC18 (real, ../shared/data/hc18, curated to temp shards) with head-circumference terciles as
the label, patient-level splits; without it, the synthetic phantom set. Backbone: a random ViT of
`--arch` (no pretrained weights ship with the repository; accuracy is near chance, and what matters
is that both protocols reach the same). Grid: the study's (13 lrs x n_last_blocks {1, 2, 4, 6} x
avgpool x losses {CE, focal, label smoothing}), batch 16, weight decay 1e-2, patience 20. Epochs: 30
by default (the study trains 200, which would keep the per-iteration arm busy for half an hour on a
CPU). When the backbone dominates, the speed-up is about epochs x (train + val) / (train + val + test)
images, less the head-training time both arms share: it grows with the epochs.
Writes `bench/results/linear_probe_cache.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from stamp import stamp

from dinov3_us.eval.backbone import load_eval_backbone
from dinov3_us.eval.config import OFFICIAL_LEARNING_RATES, LinearConfig
from dinov3_us.eval.data import EvalDataset, EvalTransform, assign_targets
from dinov3_us.eval.features import embed_batch, extract_features
from dinov3_us.eval.linear import CachedFeatures, make_grid, predict_grid, train_linear_grid
from dinov3_us.eval.metrics import classification_metrics

REPO = Path(__file__).resolve().parents[1]
HC18 = REPO.parent / "shared" / "data" / "hc18"
OUT = REPO / "bench" / "results" / "linear_probe_cache.json"


class OnlineFeatures:
    """A feature source that decodes the images and runs the frozen backbone for every request."""

    def __init__(self, model, ds: EvalDataset, n_blocks: int):
        self.model, self.ds, self.n_blocks, self.targets = model, ds, n_blocks, ds.targets
        self.images = 0

    def __len__(self) -> int:
        return len(self.ds)

    def get(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of rows `indices`, computed now."""
        x = torch.stack([self.ds[i][0] for i in indices.tolist()])  # [B, C, S, S]
        self.images += len(x)
        return embed_batch(self.model, x, self.n_blocks)


def build_data(tmp: Path, source: str) -> tuple[Path, str, dict]:
    """Curate HC18 (or the phantom) into shards under `tmp`; (folder, description, labelling)."""
    out = tmp / source
    if source == "hc18":
        args = ["--source", "hc18", "--root", str(HC18), "--resize", "96"]
        label = {"key": "head_circumference_mm", "bins": 3}
        desc = "HC18 (real fetal-head ultrasound, CC BY 4.0), head-circumference terciles from train quantiles"
    else:
        args = ["--source", "phantom", "--num-samples", "240", "--image-size", "96"]
        label = {"key": "label", "bins": None}
        desc = "phantom (synthetic fetal heads, 3 classes)"
    subprocess.run([sys.executable, str(REPO / "tools" / "build_dataset.py"), *args, "--out", str(out),
                    "--no-progress"], check=True, capture_output=True)
    return out, desc, label


def summarise(result, test, classes) -> dict:
    """Best head, its val score and its test metrics."""
    pred = predict_grid(result.grid, test, batch_size=64)[result.best].numpy()
    m = classification_metrics(test.targets, pred, classes, bootstrap=0)
    return {"best_head": result.best_spec.name, "val_score": float(result.val_scores[result.best]),
            "test_accuracy": m["accuracy"], "test_weighted_f1": m["weighted_f1"],
            "test_balanced_accuracy": m["balanced_accuracy"], "epochs_run": result.epochs_run,
            "iterations": result.iterations, "predictions": pred}


def main(argv=None) -> int:
    """Run both protocols and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--source", choices=["auto", "hc18", "phantom"], default="auto")
    p.add_argument("--output", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = ("hc18" if HC18.is_dir() else "phantom") if args.source == "auto" else args.source
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        root, desc, label = build_data(Path(tmp), source)
        backbone = load_eval_backbone("random", arch=args.arch, img_size=args.image_size)
        model = backbone.model
        t = EvalTransform(args.image_size, model.in_chans)
        train, val, test = (EvalDataset(f"{root}:{s}", t) for s in ("train", "val", "test"))
        classes = assign_targets([train, val, test], label["key"], label["bins"])
        cfg = LinearConfig(learning_rates=list(OFFICIAL_LEARNING_RATES), n_last_blocks=[1, 2, 4, 6], avgpool=[True],
                           losses=["ce", "focal", "label_smoothing"], epochs=args.epochs, batch_size=args.batch_size,
                           weight_decay=1e-2, patience=20)
        specs = make_grid(cfg, depth=model.n_blocks)
        n_blocks = max(cfg.n_last_blocks)
        print(f"data: {desc}: train {len(train)}, val {len(val)}, test {len(test)}; backbone random {args.arch} "
              f"at {args.image_size} px; grid {len(specs)} heads, {args.epochs} epochs, batch {args.batch_size}")

        start = time.perf_counter()
        feats = [extract_features(model, ds, n_blocks=n_blocks, batch_size=64, progress=False)
                 for ds in (train, val, test)]
        extract_s = time.perf_counter() - start
        tr, va, te = (CachedFeatures(f) for f in feats)
        cached = train_linear_grid(tr, va, specs, len(classes), cfg, embed_dim=model.embed_dim)
        cached_sum = summarise(cached, te, classes)
        cached_s = time.perf_counter() - start
        print(f"cached:        {cached_s:7.1f} s (features {extract_s:.1f} s, heads {cached.seconds:.1f} s)")

        start = time.perf_counter()
        on_tr, on_va, on_te = (OnlineFeatures(model, ds, n_blocks) for ds in (train, val, test))
        online = train_linear_grid(on_tr, on_va, specs, len(classes), cfg, embed_dim=model.embed_dim)
        online_sum = summarise(online, on_te, classes)
        online_s = time.perf_counter() - start
        images = on_tr.images + on_va.images + on_te.images
        print(f"per-iteration: {online_s:7.1f} s ({images} backbone passes over images)")

    same_pred = float((cached_sum.pop("predictions") == online_sum.pop("predictions")).mean())
    speedup = online_s / cached_s
    pairs = zip(cached.grid.parameters(), online.grid.parameters())
    weight_diff = max(float((a - b).abs().max().detach()) for a, b in pairs)
    for name, s in (("cached", cached_sum), ("per-iteration", online_sum)):
        print(f"{name:>13}: best {s['best_head']} (val wF1 {s['val_score']:.4f}), test accuracy "
              f"{s['test_accuracy']:.4f}, weighted F1 {s['test_weighted_f1']:.4f}")
    print(f"speed-up {speedup:.1f}x; identical test predictions {same_pred:.1%}; max head-weight difference "
          f"{weight_diff:.2e}")
    result = {
        "benchmark": "linear probe: cached features vs backbone every iteration (same grid, epochs, data, seeds)",
        "data": desc, "n": {"train": len(train), "val": len(val), "test": len(test)}, "classes": classes,
        "backbone": {"arch": args.arch, "weights": "random", "image_size": args.image_size,
                     "sha256": backbone.sha256},
        "grid": {"heads": len(specs), "learning_rates": cfg.learning_rates, "n_last_blocks": cfg.n_last_blocks,
                 "avgpool": cfg.avgpool, "losses": cfg.losses, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                 "weight_decay": cfg.weight_decay, "patience": cfg.patience},
        "cached": {"seconds": round(cached_s, 2), "features_seconds": round(extract_s, 2),
                   "heads_seconds": round(cached.seconds, 2), **cached_sum},
        "per_iteration": {"seconds": round(online_s, 2), "backbone_images": images, **online_sum},
        "speedup": round(speedup, 2),
        "identical_test_predictions": same_pred,
        "max_head_weight_difference": weight_diff,
        "same_best_head": cached_sum["best_head"] == online_sum["best_head"],
        "stamp": stamp(), "threads": args.threads, "device": "cpu",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=lambda o: o.item() if hasattr(o, "item") else o))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The frozen-feature evaluations end to end: linear probe (+ label efficiency), kNN, dense (segmentation) probe.

Each `run_*(ctx)` loads the backbone and splits, extracts every split's features once (all ranks
take part), then fits and scores on rank 0 from the gathered cache and returns the results dict
(None on the other ranks). `run_finetune` trains the whole model on every rank
(`dinov3_us.eval.finetune`). `evaluate(task, cfg, out_dir)` runs one of them in a process group and
writes its outputs: the entry point of `tools/eval_*.py` and of the launchers' evaluation jobs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Collection

import numpy as np

from dinov3_us.distributed import destroy_distributed, init_distributed
from dinov3_us.errors import ConfigError
from dinov3_us.eval.config import EvalConfig
from dinov3_us.eval.context import EvalContext, write_outputs
from dinov3_us.eval.finetune import predict, train_finetune
from dinov3_us.eval.knn import fit_knn
from dinov3_us.eval.linear import CachedFeatures, make_grid, predict_grid, subsample_by_group, train_linear_grid
from dinov3_us.eval.metrics import (
    SCALAR_METRICS,
    batched_scores,
    classification_metrics,
    dice_iou,
    segmentation_metrics,
)
from dinov3_us.eval.paired import versus_random
from dinov3_us.eval.predictions import classification_rows, segmentation_rows
from dinov3_us.eval.segmentation import plot_examples, predict_masks, train_segmentation_grid
from dinov3_us.fileio import ensure_writable_dir
from dinov3_us.log import setup_logging

logger = logging.getLogger("dinov3_us")


def _metrics(ctx: EvalContext, y_true, y_pred) -> dict:
    r = ctx.cfg.report
    return classification_metrics(y_true, y_pred, ctx.classes, bootstrap=r.bootstrap, ci=r.ci, seed=r.seed)


def run_linear(ctx: EvalContext) -> dict | None:
    """Linear probe: features once per split, the head grid on the cache, best head on val, metrics on test."""
    ctx.load(need_val=True)
    lc = ctx.cfg.linear
    specs = make_grid(lc, depth=ctx.backbone.model.n_blocks)
    n_blocks = max(s.n_blocks for s in specs)
    feats = {name: ctx.features(ds, name, n_blocks=n_blocks) for name, ds in ctx.splits().items()}
    if ctx.info.rank != 0:
        return None
    C, D = len(ctx.classes), ctx.backbone.model.embed_dim
    dev = ctx.info.device
    train, val = CachedFeatures(feats["train"], dev), CachedFeatures(feats["val"], dev)
    result = train_linear_grid(train, val, specs, C, lc, embed_dim=D, progress=ctx.progress)
    ctx.timing["heads_s"] = result.seconds
    best = result.best
    out = ctx.base_results()
    val_pred = predict_grid(result.grid, val)[best].numpy()
    out["val_metrics"] = _metrics(ctx, val.targets, val_pred)
    out["test_metrics"], out["predictions"] = {}, []
    for name in ctx.tests:
        test = CachedFeatures(feats[name], dev)
        y_pred = predict_grid(result.grid, test)[best].numpy()
        out["test_metrics"][name] = _metrics(ctx, test.targets, y_pred)
        out["predictions"] += classification_rows(name, feats[name], y_pred, ctx.classes)
    out["metrics"] = next(iter(out["test_metrics"].values()))
    out["best_head"] = {**result.best_spec.describe(), "select_metric": lc.select_metric,
                        "val_score": float(result.val_scores[best]), "epoch": result.best_epochs[best],
                        "lr_scaled": result.best_spec.lr * (lc.batch_size / 256 if lc.scale_lr else 1.0)}
    out["grid"] = {"heads": len(specs), "iterations": result.iterations, "epochs_run": result.epochs_run,
                   "val_scores": {s.name: round(float(v), 6) for s, v in zip(specs, result.val_scores)}}
    if lc.label_fractions:
        out["label_efficiency"] = label_efficiency(ctx, feats, specs)
    return out


def label_efficiency(ctx: EvalContext, feats: dict, specs) -> dict:
    """The probe retrained on patient-level subsets of the train labels: test metrics per (fraction, seed) + curve."""
    lc, C, D = ctx.cfg.linear, len(ctx.classes), ctx.backbone.model.embed_dim
    dev = ctx.info.device
    train_fs, val = feats["train"], CachedFeatures(feats["val"], dev)
    test_name = next(iter(ctx.tests))
    test = CachedFeatures(feats[test_name], dev)
    start, runs = time.perf_counter(), []
    for fraction in sorted(set(lc.label_fractions)):
        for seed in lc.label_seeds:
            idx = subsample_by_group(train_fs.targets, train_fs.groups, fraction, seed)
            sub = train_fs.subset(idx)
            cfg = dataclasses.replace(lc, seed=lc.seed + seed)
            result = train_linear_grid(CachedFeatures(sub, dev), val, specs, C, cfg, embed_dim=D)
            pred = predict_grid(result.grid, test)[result.best].numpy()
            m = _metrics(ctx, test.targets, pred)
            runs.append({"fraction": fraction, "seed": seed, "n_train": len(idx), "n_patients": len(set(sub.groups)),
                         "best_head": result.best_spec.name, **{k: m[k] for k in SCALAR_METRICS},
                         "weighted_f1_ci": m.get("weighted_f1_ci")})
            logger.info("label efficiency %.3g seed %d: %d train samples, test weighted F1 %.4f", fraction, seed,
                        len(idx), m["weighted_f1"])
    curve = []
    for fraction in sorted(set(lc.label_fractions)):
        rows = [r for r in runs if r["fraction"] == fraction]
        point = {"fraction": fraction, "n_train": float(np.mean([r["n_train"] for r in rows])), "seeds": len(rows)}
        for k in SCALAR_METRICS:
            values = [r[k] for r in rows]
            point[k], point[f"{k}_std"] = float(np.mean(values)), float(np.std(values))
        curve.append(point)
    ctx.timing["label_efficiency_s"] = time.perf_counter() - start
    return {"test_dataset": test_name, "runs": runs, "curve": curve}


def run_knn(ctx: EvalContext) -> dict | None:
    """Weighted kNN on the last block's CLS token; k chosen on val when given, else `knn.default_k`."""
    ctx.load(need_val=False)
    kc = ctx.cfg.knn
    feats = {name: ctx.features(ds, name, n_blocks=1) for name, ds in ctx.splits().items()}
    if ctx.info.rank != 0:
        return None
    start = time.perf_counter()
    C = len(ctx.classes)
    probe = fit_knn(feats["train"], feats.get("val"), kc, C)
    best_k = probe.best_k
    out = ctx.base_results()
    if "val" in feats:
        out["val_metrics"] = _metrics(ctx, feats["val"].targets, probe.val_preds[best_k].numpy())
        out["val_scores_per_k"] = {str(k): v for k, v in probe.val_scores.items()}
    out["test_metrics"], out["predictions"], per_k = {}, [], {}
    for i, name in enumerate(ctx.tests):
        preds = probe.predict(feats[name])
        y = feats[name].targets
        out["test_metrics"][name] = _metrics(ctx, y, preds[best_k].numpy())
        out["predictions"] += classification_rows(name, feats[name], preds[best_k].numpy(), ctx.classes)
        if i == 0:
            per_k = {str(k): {m: float(batched_scores(y, p.numpy()[None], C, m)[0]) for m in SCALAR_METRICS}
                     for k, p in preds.items()}
    out["metrics"] = next(iter(out["test_metrics"].values()))
    out["best_k"], out["ks"], out["per_k"] = best_k, probe.ks, per_k
    out["temperature"] = kc.temperature
    ctx.timing["knn_s"] = time.perf_counter() - start
    return out


def run_segmentation(ctx: EvalContext) -> dict | None:
    """Dense linear probe on patch tokens for binary masks: lr grid, best on val Dice, Dice / IoU on test."""
    ctx.load(need_val=True, with_mask=True, labelled=False)
    sc, r = ctx.cfg.segmentation, ctx.cfg.report
    depth = ctx.backbone.model.n_blocks
    if not 1 <= sc.n_last_blocks <= depth:
        raise ConfigError(f"segmentation.n_last_blocks={sc.n_last_blocks} must lie in 1..{depth}")
    feats = {name: ctx.features(ds, name, n_blocks=1, patch_blocks=sc.n_last_blocks)
             for name, ds in ctx.splits().items()}
    if ctx.info.rank != 0:
        return None
    grid_hw = ctx.cfg.data.image_size // ctx.backbone.model.patch_size
    result = train_segmentation_grid(feats["train"], feats["val"], sc, grid_hw=grid_hw, progress=ctx.progress)
    ctx.timing["heads_s"] = result.seconds
    out = ctx.base_results()
    out.pop("classes")
    out.pop("class_counts")
    thr = sc.foreground_threshold
    val_pred = predict_masks(result, feats["val"], result.best)
    out["val_metrics"] = segmentation_metrics(val_pred, feats["val"].tensors["masks"].numpy() >= thr,
                                              bootstrap=r.bootstrap, ci=r.ci, seed=r.seed)
    out["test_metrics"], out["predictions"] = {}, []
    first = None
    for name in ctx.tests:
        pred = predict_masks(result, feats[name], result.best)
        truth = feats[name].tensors["masks"].numpy() >= thr
        out["test_metrics"][name] = segmentation_metrics(pred, truth, bootstrap=r.bootstrap, ci=r.ci, seed=r.seed)
        out["predictions"] += segmentation_rows(name, feats[name], *dice_iou(pred, truth))
        first = first or (name, pred, truth)
    out["metrics"] = next(iter(out["test_metrics"].values()))
    out["best_lr"] = result.learning_rates[result.best]
    out["val_dice_per_lr"] = {f"{lr:g}": float(v) for lr, v in zip(result.learning_rates, result.val_scores)}
    out["foreground_threshold"] = thr
    name, pred, truth = first
    plot_examples(ctx.tests[name], pred, truth, ctx.out_dir / "examples.png")
    return out


def run_finetune(ctx: EvalContext) -> dict | None:
    """Full fine-tuning (all ranks train, DDP under torchrun); the best-val model is scored on val and test."""
    fc, d = ctx.cfg.finetune, ctx.cfg.data
    ctx.load(need_val=True, drop_path_rate=fc.drop_path_rate)
    C, device = len(ctx.classes), ctx.info.device
    result = train_finetune(ctx.backbone.model, ctx.train, ctx.val, C, fc, device=device,
                            eval_batch_size=d.batch_size, num_workers=d.num_workers, progress=ctx.progress)
    ctx.timing["train_s"] = result.seconds

    def preds(ds):
        return predict(result.model, ds, batch_size=d.batch_size, device=device, num_workers=d.num_workers)

    val_pred = preds(ctx.val)
    test_preds = {name: preds(ds) for name, ds in ctx.tests.items()}
    if ctx.info.rank != 0:
        return None
    out = ctx.base_results()
    out["val_metrics"] = _metrics(ctx, ctx.val.targets, val_pred)
    out["test_metrics"] = {name: _metrics(ctx, ctx.tests[name].targets, p) for name, p in test_preds.items()}
    out["predictions"] = [row for name, p in test_preds.items()
                          for row in classification_rows(name, ctx.tests[name], p, ctx.classes)]
    out["metrics"] = next(iter(out["test_metrics"].values()))
    out["best_epoch"], out["epochs_run"] = result.best_epoch, result.epochs_run
    out["stopped_early"] = result.stopped_early
    out["select_metric"], out["best_val_score"] = fc.select_metric, result.best_score
    out["history"] = result.history
    return out


PROTOCOLS: dict[str, Callable[[EvalContext], dict | None]] = {
    "linear": run_linear, "knn": run_knn, "finetune": run_finetune, "segmentation": run_segmentation}


def evaluate(task: str, cfg: EvalConfig, out_dir: str | os.PathLike,
             explicit: Collection[str] | None = None) -> dict | None:
    """Run protocol `task` (linear, knn, finetune, segmentation) with `cfg`, writing to `out_dir`.

    `explicit`: the `section.key`s the user set (`dinov3_us.eval.cli.explicit_keys`); the other
    defaults may be adapted to the backbone (`dinov3_us.eval.defaults`). None: values equal to
    their defaults count as unset.

    Starts the process group (torchrun, srun, a submitit job or one plain process) and destroys it at
    the end. With `report.baseline=random`, also evaluates a random initialisation of the same
    architecture into `out_dir/baseline_random/`. Returns the results on rank 0, None elsewhere.

    Raises:
        DinoUSError: a user error (bad weights, data or config).
    """
    if task not in PROTOCOLS:
        raise ConfigError(f"evaluation task {task!r}: expected one of {', '.join(PROTOCOLS)}")
    runner, out = PROTOCOLS[task], ensure_writable_dir(out_dir, "--output-dir")
    try:
        info = init_distributed(cfg.runtime.device, cfg.runtime.dist_backend, rendezvous_dir=out,
                                start_timeout_s=cfg.runtime.start_timeout_s)
        setup_logging(out, info.rank)
        start = time.perf_counter()
        ctx = EvalContext(task, cfg, out, info, explicit=explicit)
        results = runner(ctx)
        if cfg.report.baseline == "random" and ctx.backbone.kind != "random":
            logger.info("baseline: a random initialisation of the same architecture on the same splits")
            base_out = ensure_writable_dir(out / "baseline_random", "--output-dir")
            base_ctx = EvalContext(task, ctx.cfg, base_out, info, like=ctx.backbone, explicit=explicit)
            start_base = time.perf_counter()
            base_results = runner(base_ctx)
            if info.is_main:
                write_outputs(base_ctx, base_results, start_base)
                results["vs_random"] = versus_random(results, base_results, seed=cfg.report.seed)
                ctx.timing["baseline_s"] = time.perf_counter() - start_base
        if info.is_main and results is not None:
            write_outputs(ctx, results, start)
        return results if info.is_main else None
    finally:
        destroy_distributed()

"""The downstream monitor: the evaluation's probes on the EMA teacher while pretraining runs.

"Is it learning?" cannot be read off the loss (KoLeo alone makes it fall), so every
`monitor.period_iterations` and at the last iteration the trainer hands its live teacher backbone to
`DownstreamMonitor.score`, which

- extracts the features of the monitor images on all ranks (`extract_features` in lockstep: a sharded
  teacher all-gathers each block as in training; nothing is consolidated into a file) and gathers them;
- on rank 0, runs the evaluation protocol (`dinov3_us.eval.knn.fit_knn`, `dinov3_us.eval.linear`) on a
  patient-level partition of the monitor split: both probes are fitted on its `fit` part (1/2 of the
  patients), choose k / their head on its `select` part (1/4) and are scored, by weighted F1, on its
  `score` part (1/4): weighted kNN on the last CLS token (cosine, T = 0.07) and a small linear grid
  (`monitor.linear_learning_rates` x CLS / CLS + mean patch token, `monitor.linear_iterations` SGD steps);
- puts beside it the same probes on a random initialisation of the same architecture (`random_init`,
  the evaluations' own baseline, seed `monitor.seed`), computed once and kept in the checkpoint.

The monitor split is the `val` split of the first pretraining pool by default (`monitor.dataset=auto`)
and never a test split: the final evaluation scores test, the monitor chooses the best checkpoint.
All its figures are deterministic functions of the teacher's weights.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from torch import nn
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

from dinov3_us.configs import Config
from dinov3_us.configs.cross_checks import monitor_off
from dinov3_us.data.curation.splits import split_groups
from dinov3_us.data.shards import load_manifest, parse_dir_spec, split_specs
from dinov3_us.distributed import DistInfo, all_gather_object
from dinov3_us.errors import ConfigError, DinoUSError
from dinov3_us.eval.backbone import random_init
from dinov3_us.eval.config import KnnConfig, LinearConfig
from dinov3_us.eval.data import EvalDataset, EvalTransform
from dinov3_us.eval.features import FeatureSet, extract_features
from dinov3_us.eval.knn import fit_knn
from dinov3_us.eval.linear import CachedFeatures, make_grid, predict_grid, train_linear_grid
from dinov3_us.eval.metrics import batched_scores
from dinov3_us.fsdp import reshard_module
from dinov3_us.models import vit_kwargs

logger = logging.getLogger("dinov3_us")

PARTS = {"select": 0.25, "score": 0.25}  # of the patients; the rest (1/2) is the `fit` part
MIN_PATIENTS = 3  # in each part: fewer make the scores noise (monitor.dataset=auto then switches the monitor off)
METRIC = "weighted_f1"
LINEAR_EPOCHS = 10  # the linear grid's head is chosen on the select part after the last


def monitor_dataset(cfg: Config) -> tuple[str | None, str]:
    """(the monitor split's shards spec or None, a one-line note saying which, or why there is none).

    Raises:
        ConfigError: an explicit `monitor.dataset` that names a test split or is not a shards folder.
    """
    if monitor_off(cfg.monitor.dataset):
        return None, "downstream monitor: off (monitor.dataset=none)"
    spec = str(cfg.monitor.dataset).strip()
    if spec != "auto":
        parsed = parse_dir_spec(spec)
        if parsed is None or not parsed[1]:
            raise ConfigError(f"monitor.dataset: {spec!r} is not DIR:split of a curated shards folder")
        if "test" in parsed[1]:
            raise ConfigError(f"monitor.dataset: {spec!r} names a test split; the monitor chooses checkpoints, "
                              "so it must not see the split the final evaluation reports (use val)")
        return spec, f"downstream monitor on {spec}"
    first = split_specs(cfg.train.dataset_path)[0] if cfg.train.dataset_path else ""
    parsed = parse_dir_spec(first) if first else None
    if parsed is None:
        return None, "downstream monitor: off (monitor.dataset=auto, and train.dataset_path is not a shards folder)"
    folder = parsed[0]
    try:
        manifest = load_manifest(folder)
    except DinoUSError:
        return None, f"downstream monitor: off ({folder} has no manifest.json; set monitor.dataset=DIR:split)"
    if not manifest.get("labels") or not manifest.get("shards", {}).get("val"):
        return None, (f"downstream monitor: off ({folder} has no labelled val split; set monitor.dataset=DIR:split "
                      "to a labelled split the final evaluation does not report)")
    return f"{folder}:val", f"downstream monitor on {folder}:val (monitor.dataset=auto)"


def partition(groups: list[str], targets: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """{"fit", "select", "score"} -> sample indices: the patients split 1/2, 1/4, 1/4, stratified by label."""
    labels: dict[str, list] = defaultdict(list)
    for g, t in zip(groups, targets.tolist()):
        labels[g].append(str(t))
    assignment = split_groups(labels, PARTS, seed, rest="fit")
    return {part: np.array([i for i, g in enumerate(groups) if assignment[g] == part], dtype=np.int64)
            for part in ("fit", *PARTS)}


@dataclass
class ProbeScores:
    """The weighted F1 of each probe on the score part, with what each chose on the select part."""

    scores: dict[str, float] = field(default_factory=dict)  # probe -> weighted F1 on `score`
    chosen: dict[str, str] = field(default_factory=dict)  # probe -> "k=20" / head name

    def as_dict(self) -> dict:
        return {"scores": dict(self.scores), "chosen": dict(self.chosen)}


class DownstreamMonitor:
    """Scores the teacher on the monitor split every `period` iterations (see the module docstring).

    `start()` (collective, once per process) computes or restores the random-init baseline; `due(it)`
    says when to score; `score(backbone, it)` (collective) returns the metrics to log; `update_best`
    keeps the best score of `select`. `state_dict()` goes into the checkpoint.
    """

    def __init__(self, cfg: Config, spec: str, dist_info: DistInfo, total_iterations: int):
        m = cfg.monitor
        self.spec, self.dist, self.total = spec, dist_info, total_iterations
        self.period, self.probes, self.select, self.seed = m.period_iterations, list(m.probes), m.select, m.seed
        self.batch_size = m.batch_size
        self.arch = vit_kwargs(cfg.student, cfg.crops.global_crops_size)
        self.knn_cfg = KnnConfig()
        self.linear_cfg = LinearConfig(learning_rates=list(m.linear_learning_rates), n_last_blocks=[1],
                                       avgpool=[False, True], epochs=LINEAR_EPOCHS,
                                       iterations_per_epoch=m.linear_iterations // LINEAR_EPOCHS, seed=m.seed)
        self.transform = EvalTransform(cfg.crops.global_crops_size, cfg.student.in_chans)
        self.dataset = EvalDataset(spec, self.transform)
        self.classes = list(self.dataset.classes)
        targets = self.dataset.targets
        if len(self.classes) < 2 or (targets < 0).any():
            raise ConfigError(f"monitor.dataset {spec}: the monitor needs every sample labelled with one of >= 2 "
                              f"classes ({int((targets < 0).sum())} unlabelled, classes {self.classes})")
        self.parts = partition(self.dataset.groups, targets, self.seed)
        patients = {p: len({self.dataset.groups[i] for i in ix}) for p, ix in self.parts.items()}
        problems = [f"{p} has {n} patient(s)" for p, n in patients.items() if n < MIN_PATIENTS]
        if len(np.unique(targets[self.parts["fit"]])) < 2:
            problems.append("its fit part has fewer than 2 classes")
        if problems:
            raise ConfigError(f"monitor.dataset {spec}: too few patients for the monitor's fit / select / score "
                              f"partition (need >= {MIN_PATIENTS} each: {'; '.join(problems)}); give a larger "
                              "labelled split, or monitor.dataset=none")
        self.random: dict | None = None  # the random init's ProbeScores.as_dict()
        self.best: dict | None = None  # {"iteration", "score", "metric"}
        self.last: dict | None = None  # the last logged monitor metrics
        self.seconds_total = 0.0
        self._registered: set[int] = set()  # FSDP modules whose get_intermediate_layers unshards like forward

    @classmethod
    def build(cls, cfg: Config, dist_info: DistInfo, total_iterations: int) -> DownstreamMonitor | None:
        """The monitor `cfg` asks for, or None (both cases logged in one line)."""
        spec, note = monitor_dataset(cfg)
        if spec is None:
            logger.info(note)
            return None
        try:
            monitor = cls(cfg, spec, dist_info, total_iterations)
        except ConfigError as err:
            if cfg.monitor.dataset != "auto":
                raise
            logger.info("downstream monitor: off (%s)", err)
            return None
        logger.info("%s: %s", note, monitor.describe())
        return monitor

    @property
    def key(self) -> str:
        """The metric that keeps the best checkpoint, e.g. `monitor_knn`."""
        return f"monitor_{self.select}"

    def describe(self) -> str:
        """One line: the split, its partition and the probes."""
        n = {p: len(ix) for p, ix in self.parts.items()}
        patients = len(set(self.dataset.groups))
        return (f"{self.spec}: {len(self.dataset)} images of {patients} patients, fit/select/score "
                f"{n['fit']}/{n['select']}/{n['score']}; probes {', '.join(self.probes)}; best checkpoint by "
                f"{self.key}; every {self.period} iterations and at the last")

    # -- when -------------------------------------------------------------------------------------------
    def due(self, iteration: int) -> bool:
        """Score after `iteration`: every `period` iterations and after the last one."""
        return (iteration + 1) % self.period == 0 or iteration + 1 == self.total

    # -- scoring --------------------------------------------------------------------------------------
    def start(self) -> None:
        """The random-init baseline (collective): computed once, then restored from the checkpoint."""
        if self.random is not None:
            logger.info("monitor: random-init baseline restored from the checkpoint: %s", _fmt(self.random["scores"]))
            return
        start = time.perf_counter()
        backbone = random_init(self.arch, "the pretrained teacher", self.seed)
        backbone.model.to(self.dist.device)
        scores = self._probe(self._features(backbone.model, lockstep=False))
        self.random = all_gather_object(scores.as_dict() if scores else None)[0]
        del backbone
        seconds = time.perf_counter() - start
        self.seconds_total += seconds
        logger.info("monitor: random init of the same architecture: %s (%.1f s)", _fmt(self.random["scores"]), seconds)

    def score(self, backbone: nn.Module, iteration: int) -> dict[str, float]:
        """Metrics of the teacher `backbone` after `iteration` (collective; the same dict on every rank)."""
        start = time.perf_counter()
        if isinstance(backbone, FSDPModule) and id(backbone) not in self._registered:
            register_fsdp_forward_method(backbone, "get_intermediate_layers")  # unshard around it, as around forward
            self._registered.add(id(backbone))
        was_training = backbone.training
        backbone.eval()  # no RoPE jitter, no drop path
        try:
            feats = self._features(backbone, lockstep=True)
        finally:
            backbone.train(was_training)
            reshard_module(backbone)
        scores = self._probe(feats)
        scores = all_gather_object(scores.as_dict() if scores else None)[0]
        seconds = time.perf_counter() - start
        self.seconds_total += seconds
        out = {}
        for probe, value in scores["scores"].items():
            out[f"monitor_{probe}"] = value
            out[f"monitor_{probe}_random"] = self.random["scores"][probe]
        out["monitor_seconds"] = seconds
        self.last = {"iteration": iteration, **out, "chosen": scores["chosen"]}
        return out

    def _features(self, model: nn.Module, lockstep: bool) -> FeatureSet:
        return extract_features(model, self.dataset, n_blocks=1, batch_size=self.batch_size, device=self.dist.device,
                                name="monitor", progress=False, lockstep=lockstep)

    def _probe(self, feats: FeatureSet) -> ProbeScores | None:
        """The probes' weighted F1 on the score part (rank 0; None elsewhere)."""
        if not self.dist.is_main:
            return None
        fit, select, score = (feats.subset(self.parts[p]) for p in ("fit", "select", "score"))
        C, out = len(self.classes), ProbeScores()
        if "knn" in self.probes:
            probe = fit_knn(fit, select, self.knn_cfg, C)
            pred = probe.predict(score)[probe.best_k].numpy()
            out.scores["knn"] = float(batched_scores(score.targets, pred[None], C, METRIC)[0])
            out.chosen["knn"] = f"k={probe.best_k}"
        if "linear" in self.probes:
            specs = make_grid(self.linear_cfg)
            result = train_linear_grid(CachedFeatures(fit), CachedFeatures(select), specs, C, self.linear_cfg,
                                       embed_dim=feats.tensors["cls"].shape[-1])
            pred = predict_grid(result.grid, CachedFeatures(score))[result.best].numpy()
            out.scores["linear"] = float(batched_scores(score.targets, pred[None], C, METRIC)[0])
            out.chosen["linear"] = result.best_spec.name
        return out

    # -- the best checkpoint --------------------------------------------------------------------------
    def update_best(self, iteration: int, metrics: dict) -> bool:
        """Whether `metrics` (from `score`) beat the best so far on `select` (ties keep the earlier); records it."""
        value = metrics[self.key]
        if self.best is not None and value <= self.best["score"]:
            return False
        self.best = {"iteration": iteration, "score": value, "metric": self.key,
                     "random": metrics[f"{self.key}_random"], "split": self.spec}
        return True

    def state_dict(self) -> dict:
        """What a resumed run needs: the random baseline and the best so far."""
        return {"random": self.random, "best": self.best, "spec": self.spec}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` (a checkpoint of a run without the monitor, or on another split, restores nothing)."""
        if state.get("spec") == self.spec:
            self.random, self.best = state.get("random"), state.get("best")

    def summary(self) -> str | None:
        """`kNN 0.61 (random 0.44), linear 0.58 (random 0.40) at iteration 999`, or None before the first score."""
        if self.last is None:
            return None
        parts = [f"{name} {self.last[f'monitor_{probe}']:.3f} (random {self.last[f'monitor_{probe}_random']:.3f})"
                 for probe, name in (("knn", "kNN"), ("linear", "linear")) if f"monitor_{probe}" in self.last]
        return ", ".join(parts) + f" at iteration {self.last['iteration']}"


def _fmt(scores: dict) -> str:
    return ", ".join(f"{k} weighted F1 {v:.3f}" for k, v in scores.items())

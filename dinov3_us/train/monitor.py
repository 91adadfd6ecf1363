"""Collapse and divergence watch: per-step statistics that a collapsed or diverging run gives away.

- `teacher_entropy`: mean entropy of each image's teacher distribution softmax(logits / T), divided
  by log K. Near 1: every image gets a uniform distribution (uniform collapse).
- `teacher_batch_entropy`: entropy of the batch-averaged targets (the teacher distribution after
  Sinkhorn-Knopp or the centre: what the student is trained on) / log K. Near 0: all images put their
  mass on the same few prototypes (dominant-prototype collapse). The raw softmax(logits / T) is not
  used: on look-alike images at a low temperature its batch average sits on the prototypes that every
  image shares, which the centring removes and which therefore teaches nothing (a false alarm).
- `target_entropy`: mean entropy of the centred targets the student is trained on (after Sinkhorn-
  Knopp or centring) / log K. The DINO loss cannot fall below it: a DINO loss near log K with a
  target entropy near 1 means the targets still carry (almost) no information about the image.
- `teacher_logit_std`: std over the batch of the teacher's logits / T, averaged over prototypes: how far
  apart the teacher puts the images before centring. Far below 1, Sinkhorn-Knopp (or the centre) cannot
  tell the images apart and the targets stay uniform, whatever the backbone learns.
- `teacher_cls_std`, `student_cls_std`: std over the batch of the L2-normalised pre-head CLS tokens,
  averaged over dimensions and multiplied by sqrt(D): about 1 for spread-out features, 0 when every
  image maps to the same vector (representation collapse).
Statistics are per process (no collective): cheap, and enough to see a collapse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dinov3_us.errors import ConfigError


def _normalised_entropy(probs: Tensor) -> Tensor:  # [..., K] -> [...]
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(probs.shape[-1])


def _cls_std(cls: Tensor) -> Tensor:  # [n_crops, B, D] -> scalar
    x = F.normalize(cls.flatten(0, -2).float(), dim=-1)  # [n_crops * B, D]
    if x.shape[0] < 2:
        return torch.zeros((), device=x.device)
    return x.std(dim=0).mean() * math.sqrt(x.shape[-1])


@torch.no_grad()
def collapse_metrics(teacher_global: Mapping[str, Tensor], student_global: Mapping[str, Tensor],
                     teacher_temp: float) -> dict[str, Tensor]:
    """Collapse statistics of one step from the teacher and student outputs of `SSLMetaArch`."""
    logits = teacher_global["cls_after_head"].flatten(0, 1).float() / teacher_temp  # [n * B, K]
    probs = F.softmax(logits, dim=-1)  # [n * B, K]
    return {
        "teacher_entropy": _normalised_entropy(probs).mean(),
        "teacher_batch_entropy": _normalised_entropy(teacher_global["cls_centered"].flatten(0, 1).float().mean(0)),
        "teacher_logit_std": logits.std(dim=0).mean() if logits.shape[0] > 1 else logits.new_zeros(()),
        "target_entropy": _normalised_entropy(teacher_global["cls_centered"].flatten(0, 1).float()).mean(),
        "teacher_cls_std": _cls_std(teacher_global["cls_pre_head"]),
        "student_cls_std": _cls_std(student_global["cls_pre_head"].detach()),
    }


@dataclass
class CollapseWatch:
    """Thresholds on `collapse_metrics`; `check()` lists the ones a step violates."""

    min_teacher_batch_entropy: float = 0.7
    min_cls_std: float = 0.05
    max_teacher_entropy: float | None = None  # off by default: a fresh run's teacher is near uniform too

    def check(self, metrics: Mapping[str, float | Tensor]) -> list[str]:
        """Human-readable violations (empty when the step looks healthy); non-finite values included."""
        values = {k: float(v) for k, v in metrics.items() if k in _WATCHED}
        problems = [f"{k} is {v}" for k, v in values.items() if not math.isfinite(v)]
        if self.max_teacher_entropy is not None and values.get("teacher_entropy", 0.0) > self.max_teacher_entropy:
            problems.append(f"teacher_entropy {values['teacher_entropy']:.3f} > {self.max_teacher_entropy}: "
                            "uniform teacher outputs")
        if values.get("teacher_batch_entropy", 1.0) < self.min_teacher_batch_entropy:
            problems.append(f"teacher_batch_entropy {values['teacher_batch_entropy']:.3f} < "
                            f"{self.min_teacher_batch_entropy}: one prototype dominates")
        for key in ("teacher_cls_std", "student_cls_std"):
            if values.get(key, 1.0) < self.min_cls_std:
                problems.append(f"{key} {values[key]:.3f} < {self.min_cls_std}: CLS features collapsed")
        return problems


_WATCHED = ("teacher_entropy", "teacher_batch_entropy", "teacher_cls_std", "student_cls_std")


def dino_loss_ratio(metrics: Mapping[str, float | Tensor], n_prototypes: int) -> float | None:
    """The DINO loss (mean of its global and local terms) / ln K; 1 = uniform predictions. None without DINO terms."""
    terms = [float(metrics[k]) for k in ("dino_global_crops_loss", "dino_local_crops_loss") if k in metrics]
    return sum(terms) / len(terms) / math.log(n_prototypes) if terms else None


SELFDISTILL_THRESHOLD = 0.97  # DINO loss / ln K and target entropy at or above it: self-distillation has not started


@dataclass
class SelfDistillationWatch:
    """The alarm for a run whose self-distillation has not started.

    From iteration `start` (the end of the lr warm-up) on, an iteration is *stalled* when the DINO loss
    is >= `threshold` ln K and the target entropy >= `threshold`: the targets still carry no information
    about the image and only KoLeo (and the iBOT/DINO heads' drift) move the loss. After `patience`
    iterations stalled at every logged iteration, `update()` returns the warning once, and
    `selfdistill_stalled` is 1 from then until the run leaves the plateau. `state_dict()` goes into the
    checkpoint so that a resumed run flags the same iterations.
    """

    n_prototypes: int
    patience: int  # iterations; 0 switches the alarm off
    start: int = 0
    threshold: float = SELFDISTILL_THRESHOLD
    stalled_since: int | None = None
    fired: bool = False

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ConfigError(f"train.selfdistill_alarm_iterations must be >= 0 (0: off), got {self.patience}")

    def update(self, iteration: int, metrics: dict) -> str | None:
        """Add `dino_loss_ratio` and `selfdistill_stalled` to `metrics`; the warning text when the alarm goes off."""
        ratio = dino_loss_ratio(metrics, self.n_prototypes)
        if ratio is None or "target_entropy" not in metrics:
            return None
        metrics["dino_loss_ratio"] = ratio
        entropy = float(metrics["target_entropy"])
        if iteration < self.start or ratio < self.threshold or entropy < self.threshold:
            self.stalled_since = None
            metrics["selfdistill_stalled"] = 0.0
            return None
        if self.stalled_since is None:
            self.stalled_since = iteration
        stalled_for = iteration - self.stalled_since
        alarm = self.patience > 0 and stalled_for >= self.patience
        metrics["selfdistill_stalled"] = float(alarm)
        if not alarm or self.fired:
            return None
        self.fired = True
        spread = (f"; the teacher's logits differ by only {float(metrics['teacher_logit_std']):.3g} T across the batch"
                  if "teacher_logit_std" in metrics else "")
        return (f"self-distillation has not started after {iteration + 1} iterations: for the last "
                f"{stalled_for} iterations the DINO loss has stayed at {ratio:.3f} ln K and the targets at "
                f"{entropy:.3f} of the uniform entropy{spread}, so only KoLeo makes the loss fall. What decides it "
                "(bench/bench_selfdistill_onset.py): " + DECISIVE_KNOBS)

    def state_dict(self) -> dict:
        """What a resumed run needs to flag the same iterations."""
        return {"stalled_since": self.stalled_since, "fired": self.fired}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore `state_dict()`."""
        self.stalled_since, self.fired = state.get("stalled_since"), bool(state.get("fired", False))


# What bench/bench_selfdistill_onset.py found decisive on look-alike ultrasound (docs/selfdistill_onset.md).
DECISIVE_KNOBS = ("the teacher must tell images apart by several temperatures before centring (teacher_logit_std), and "
                  "with the official choices it does not: lower the teacher temperature (teacher.teacher_temp and "
                  "teacher.warmup_teacher_temp, e.g. 0.01), start LayerScale at 0.1 (student.layerscale), use fewer "
                  "prototypes for a small pool (dino/ibot.head_n_prototypes, e.g. 128-1024), do not freeze them "
                  "(optim.freeze_last_layer_epochs=0) and make them unit-norm (dino/ibot.head_norm_last_layer=true), "
                  "as configs/train/*_smalldata.yaml and small_cpu.yaml do")

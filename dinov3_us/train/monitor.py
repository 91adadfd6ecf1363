"""Collapse and divergence watch: per-step statistics that a collapsed or diverging run gives away.

- `teacher_entropy`: mean entropy of each image's teacher distribution softmax(logits / T), divided
  by log K. Near 1: every image gets a uniform distribution (uniform collapse).
- `teacher_batch_entropy`: entropy of the batch-averaged teacher distribution / log K. Near 0: all
  images put their mass on the same few prototypes (dominant-prototype collapse).
- `target_entropy`: mean entropy of the centred targets the student is trained on (after Sinkhorn-
  Knopp or centring) / log K. The DINO loss cannot fall below it: a DINO loss near log K with a
  target entropy near 1 means the targets still carry (almost) no information about the image.
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
    probs = F.softmax(teacher_global["cls_after_head"].flatten(0, 1).float() / teacher_temp, dim=-1)  # [n * B, K]
    return {
        "teacher_entropy": _normalised_entropy(probs).mean(),
        "teacher_batch_entropy": _normalised_entropy(probs.mean(0)),
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

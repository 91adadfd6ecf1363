"""Gram anchoring (DINOv3): keep the student's patch-similarity structure close to a Gram teacher's.

The Gram teacher is the EMA teacher itself (`gram.ema_teacher`) or a frozen copy of it loaded from
`gram.ckpt` or copied from the EMA teacher at `gram.it_load_ema_teacher`, then refreshed every
`gram.update_frequency` iterations from `gram.it_first_update` (at most `gram.max_updates` times).
Its state (initialised, number of refreshes) lives in buffers, so it is checkpointed with the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov3_us.errors import ConfigError
from dinov3_us.loss import GramLoss
from dinov3_us.models import build_model_from_cfg
from dinov3_us.weights import load_backbone_weights

logger = logging.getLogger("dinov3_us")


class GramAnchoring(nn.Module):
    """Gram-teacher bookkeeping, targets and loss for `SSLMetaArch`."""

    def __init__(self, cfg: Mapping) -> None:
        """`cfg`: a validated config (`dinov3_us.configs.load_config` checks the gram section's combinations)."""
        super().__init__()
        g = cfg["gram"]
        self.cfg = cfg
        self.g = g
        self.loss_fn = GramLoss(apply_norm=g["normalized"], img_level=g["img_level"], remove_neg=g["remove_neg"],
                                remove_only_teacher_neg=g["remove_only_teacher_neg"])
        self.register_buffer("initialized", torch.tensor(bool(g["ema_teacher"])))
        self.register_buffer("n_updates", torch.tensor(0, dtype=torch.long))

    def build_teacher(self) -> nn.ModuleDict | None:
        """A frozen backbone for the Gram teacher, or None when the EMA teacher serves."""
        if self.g["ema_teacher"]:
            return None
        backbone, _ = build_model_from_cfg(self.cfg, only_teacher=True)
        return nn.ModuleDict({"backbone": backbone}).requires_grad_(False)

    @torch.no_grad()
    def init_teacher(self, gram_teacher: nn.ModuleDict | None, teacher: nn.ModuleDict) -> None:
        """Load `gram.ckpt` into the Gram teacher (strictly), if given."""
        if gram_teacher is not None and self.g["ckpt"]:
            load_backbone_weights(gram_teacher.backbone, self.g["ckpt"])
            self.initialized.fill_(True)

    @torch.no_grad()
    def maybe_refresh(self, gram_teacher: nn.ModuleDict | None, teacher: nn.ModuleDict, iteration: int) -> bool:
        """Copy the EMA teacher's backbone into the Gram teacher when the schedule says so."""
        if gram_teacher is None:
            return False
        g, first = self.g, self.g["it_first_update"]
        load_now = iteration == g["it_load_ema_teacher"]
        limit_ok = g["max_updates"] is None or int(self.n_updates) < g["max_updates"]
        refresh = (g["rep_update"] and iteration > first and (iteration - first) % g["update_frequency"] == 0
                   and limit_ok)
        if not (load_now or refresh):
            return False
        for dst, src in zip(gram_teacher.backbone.parameters(), teacher.backbone.parameters()):
            dst.copy_(src)
        self.initialized.fill_(True)
        self.n_updates += int(refresh)
        logger.info("Gram teacher refreshed from the EMA teacher at iteration %d", iteration)
        return True

    @torch.no_grad()
    def _teacher_patches(self, gram_teacher, crops: Tensor | None, teacher_global: Mapping, n_student: int) -> Tensor:
        if gram_teacher is None:
            return teacher_global["patch_pre_head"].flatten(0, 1)  # [n_g * B, P, D]
        if not bool(self.initialized):
            raise ConfigError("the Gram teacher is used before it was loaded (gram.ckpt / gram.it_load_ema_teacher)")
        if crops is None:
            raise ConfigError("gram.use_loss with a Gram teacher needs crops.gram_teacher_crops_size (no Gram crops)")
        patches = gram_teacher.backbone(crops.to(teacher_global["patch_pre_head"].device), is_training=True)
        patches = patches["x_norm_patchtokens"]  # [n_g * B, P_T, D]
        side_t, side_s = int(patches.shape[1] ** 0.5), int(n_student**0.5)
        if side_t != side_s:  # resize the teacher's patch grid to the student's
            grid = patches.transpose(1, 2).unflatten(-1, (side_t, side_t))  # [n_g * B, D, N, N]
            grid = F.interpolate(grid.float(), size=(side_s, side_s), mode=self.g["global_teacher_resize_method"],
                                 align_corners=False, antialias=self.g["global_teacher_resize_antialias"])
            patches = grid.flatten(-2).transpose(1, 2).to(patches.dtype)  # [n_g * B, P, D]
        return patches

    def targets(self, gram_teacher, crops, teacher_global: Mapping, student_global: Mapping,
                masks: Tensor) -> dict[str, Tensor]:
        """Student and teacher patch features to compare, restricted to `gram.tokens_used`."""
        student = student_global["patch_pre_head"].flatten(0, 1)  # [n_g * B, P, D]
        teacher = self._teacher_patches(gram_teacher, crops, teacher_global, student.shape[1])
        if self.g["tokens_used"] == "masked":
            student, teacher = student[masks], teacher[masks]
        elif self.g["tokens_used"] == "unmasked":
            student, teacher = student[~masks], teacher[~masks]
        return {"student_patches": student, "teacher_patches": teacher}

    def loss(self, gram_global: Mapping[str, Tensor]) -> Tensor:
        """The Gram loss between student and teacher patch similarities."""
        student, teacher = gram_global["student_patches"], gram_global["teacher_patches"]
        return self.loss_fn(student, teacher, img_level=self.g["img_level"])

    def weight(self, iteration: int) -> float:
        """The Gram loss weight (`gram.loss_weight`)."""
        return self.g["loss_weight"]

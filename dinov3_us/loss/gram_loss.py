"""Gram anchoring loss (DINOv3): MSE between the patch-similarity (Gram) matrices of student and
Gram-teacher features, which keeps dense features well localised during long trainings.

Same names and numerics as the official `dinov3.loss.GramLoss`. One deviation: the constructor's
`img_level` is the default of `forward(..., img_level=None)` (the official constructor accepts it and
ignores it); passing `img_level` to `forward` explicitly behaves as in the official code.
"""

import torch
import torch.nn.functional as F
from torch import nn

from dinov3_us.errors import ConfigError


class GramLoss(nn.Module):
    """MSE between Gram matrices of student and teacher patch features.

    Args:
        apply_norm: L2-normalise features first (Gram entries become cosine similarities).
        img_level: default for `forward`: one Gram matrix per image (True) or one over the whole batch.
        remove_neg: clamp negative similarities of both student and teacher to 0.
        remove_only_teacher_neg: zero negative teacher similarities, and student ones only where the
            teacher's is negative too. At most one of the two `remove_*` options may be set.
    """

    def __init__(self, apply_norm=True, img_level=True, remove_neg=True, remove_only_teacher_neg=False):
        super().__init__()
        if remove_neg and remove_only_teacher_neg:
            raise ConfigError("GramLoss: set at most one of remove_neg and remove_only_teacher_neg")
        self.mse_loss = nn.MSELoss()
        self.apply_norm = apply_norm
        self.img_level = img_level
        self.remove_neg = remove_neg
        self.remove_only_teacher_neg = remove_only_teacher_neg

    def _gram(self, feats: torch.Tensor, img_level: bool) -> torch.Tensor:
        feats = feats.float()
        if self.apply_norm:
            feats = F.normalize(feats, dim=-1)
        if not img_level and feats.ndim == 3:
            feats = feats.flatten(0, 1)  # [B, N, D] -> [B * N, D]
        return torch.matmul(feats, feats.transpose(-1, -2))  # [B, N, N] or [B * N, B * N]

    def forward(self, output_feats, target_feats, img_level=None):
        """Scalar loss.

        Args:
            output_feats: student features [B, N, D] (or [B * N, D] when not img_level).
            target_feats: teacher features, same shape.
            img_level: Gram per image (needs [B, N, D]) or over all B * N patches; None: constructor value.
        """
        img_level = self.img_level if img_level is None else img_level
        if img_level and (output_feats.ndim != 3 or target_feats.ndim != 3):
            raise ValueError(
                "GramLoss with img_level=True needs [B, N, D] features, got "
                f"{tuple(output_feats.shape)} and {tuple(target_feats.shape)}"
            )
        target_sim = self._gram(target_feats, img_level)
        student_sim = self._gram(output_feats, img_level)
        if self.remove_neg:
            target_sim = target_sim.clamp(min=0.0)
            student_sim = student_sim.clamp(min=0.0)
        elif self.remove_only_teacher_neg:
            teacher_neg = target_sim < 0
            student_sim = torch.where((student_sim < 0) & teacher_neg, torch.zeros_like(student_sim), student_sim)
            target_sim = target_sim.clamp(min=0.0)
        return self.mse_loss(student_sim, target_sim)

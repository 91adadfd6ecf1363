"""DINO loss on the class token: cross-entropy between teacher and student prototype distributions.

Same names, signatures and numerics as the official `dinov3.loss.DINOLoss`. Teacher targets come
either from Sinkhorn-Knopp (`sinkhorn_knopp_teacher`, what DINOv3 trains with) or from softmax with
an EMA center (`softmax_center_teacher` + `update_center`, the DINO/DINOv2 variant).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from dinov3_us.loss.centering import EMACenterMixin
from dinov3_us.loss.sinkhorn_knopp import sinkhorn_knopp


class DINOLoss(EMACenterMixin, nn.Module):
    """Cross-entropy between every (student crop, teacher crop) pair of the same image.

    Args:
        out_dim: number of prototypes K.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the softmax-centering `center`.
        process_group: group over which the teacher statistics are reduced (None: default group).

    The `center` buffer [1, K] starts as NaN, as in the official code, so that forgetting
    `init_weights()` (which zeroes it) shows up as NaN instead of silently training.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9, process_group=None):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.process_group = process_group
        self.register_buffer("center", torch.full((1, out_dim), math.nan))
        self._init_center_state()

    def init_weights(self) -> None:
        """Zero the softmax-centering center."""
        self.center.zero_()

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output, teacher_temp, update_centers=True):
        """Teacher probabilities softmax((teacher_output - center) / T) over K; [B, K] -> [B, K].

        `F.softmax` subtracts the row maximum before exp, so large logits or a low T cannot overflow.
        With `update_centers`, a pending `update_center` is applied first.
        """
        if update_centers:
            self.apply_center_update()
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output, teacher_temp, n_iterations=3):
        """Sinkhorn-Knopp teacher probabilities, [B_local, K] -> [B_local, K] (float32).

        Every rank of the group must pass the same number of rows.
        """
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations=n_iterations, group=self.process_group)

    def forward(self, student_logits, teacher_probs, ignore_diagonal=False):
        """Mean cross-entropy over all (student crop s, teacher crop t, image b) triples.

        Args:
            student_logits: [S, B, K] raw student logits.
            teacher_probs: [T, B, K] teacher probabilities (rows sum to 1).
            ignore_diagonal: skip the pairs s == t (same crop seen by student and teacher).

        Returns:
            Scalar float32 loss.
        """
        if student_logits.ndim != 3 or teacher_probs.ndim != 3 or student_logits.shape[1:] != teacher_probs.shape[1:]:
            raise ValueError(
                "expected student_logits [S, B, K] and teacher_probs [T, B, K] with the same B and K, got "
                f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
            )
        student_crops, batch, _ = student_logits.shape
        teacher_crops = teacher_probs.shape[0]
        log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)  # [S, B, K]
        if not ignore_diagonal:
            loss = -torch.einsum("sbk,tbk->", log_probs, teacher_probs)
            return loss / (batch * student_crops * teacher_crops)
        n_diag = min(student_crops, teacher_crops)
        n_terms = batch * (student_crops * teacher_crops - n_diag)
        if n_terms == 0:
            raise ValueError("ignore_diagonal=True leaves no (student, teacher) pair: use more than one crop")
        loss = -torch.einsum("sbk,tbk->st", log_probs, teacher_probs)  # [S, T]
        loss = torch.diagonal_scatter(loss, loss.new_zeros(n_diag))
        return loss.sum() / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output):
        """Start the EMA center update with this step's teacher logits [B, K] (reduced asynchronously)."""
        self.reduce_center_update(teacher_output)

    @torch.no_grad()
    def reduce_center_update(self, teacher_output):
        """Sum teacher logits over the batch and launch the (async) all-reduce over the group."""
        batch_sum = torch.sum(teacher_output.float(), dim=0, keepdim=True)  # [1, K]
        self._launch_center_reduce(batch_sum, len(teacher_output))

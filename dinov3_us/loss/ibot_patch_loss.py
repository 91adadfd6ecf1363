"""iBOT masked-patch loss: cross-entropy between teacher and student prototypes of masked patches.

Same names, signatures and numerics as the official `dinov3.loss.iBOTPatchLoss`. Teacher targets come
from Sinkhorn-Knopp over the masked patches of all ranks (`sinkhorn_knopp_teacher`) or from softmax
with an EMA center (`softmax_center_teacher` + `update_center`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from dinov3_us.loss.centering import EMACenterMixin
from dinov3_us.loss.cross_entropy import soft_cross_entropy
from dinov3_us.loss.sinkhorn_knopp import sinkhorn_knopp


def lossfunc(t, s, temp):
    """Per-row sum_k t_k * log softmax(s / temp)_k in float32; [..., K] x [..., K] -> [...] (the official formula)."""
    return soft_cross_entropy(t, s, temp)


class SinkhornKnoppTeacher(nn.Module):
    """Sinkhorn-Knopp centering as a module, so that callers can `.compile()` it as a unit.

    Unlike DINO's, ranks may hold different numbers of masked patches: the global count is the sum of
    `n_masked_patches_tensor` over the group (the caller's tensor is not modified).
    """

    def __init__(self, process_group=None):
        super().__init__()
        self.process_group = process_group

    @torch.no_grad()
    def forward(self, teacher_output, teacher_temp, n_masked_patches_tensor, n_iterations=3):
        """Teacher logits of this rank's masked patches [M_local, K] -> probabilities [M_local, K]."""
        return sinkhorn_knopp(
            teacher_output,
            teacher_temp,
            n_iterations=n_iterations,
            n_samples=torch.as_tensor(n_masked_patches_tensor),
            group=self.process_group,
        )


class iBOTPatchLoss(EMACenterMixin, nn.Module):  # lower-case "i": the official name
    """Masked-patch cross-entropy, each image weighted equally whatever its number of masked patches.

    Args:
        patch_out_dim: number of patch prototypes K.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the softmax-centering `center` [1, 1, K] (NaN until `init_weights`).
        process_group: group over which teacher statistics are reduced (None: default group).

    Unlike the official module, the Sinkhorn-Knopp module is not compiled here; compile it where the
    model is compiled (`loss.sinkhorn_knopp_teacher.compile()`).
    """

    def __init__(self, patch_out_dim, student_temp=0.1, center_momentum=0.9, process_group=None):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.process_group = process_group
        self.register_buffer("center", torch.full((1, 1, patch_out_dim), math.nan))
        self._init_center_state()
        self.sinkhorn_knopp_teacher = SinkhornKnoppTeacher(process_group)

    def init_weights(self) -> None:
        """Zero the softmax-centering center."""
        self.center.zero_()

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens, teacher_temp, update_centers=True):
        """softmax((teacher_patch_tokens - center) / T) over K (max-subtracted by `F.softmax`)."""
        if update_centers:
            self.apply_center_update()
        return F.softmax((teacher_patch_tokens - self.center) / teacher_temp, dim=-1)

    def forward(self, student_patch_tokens, teacher_patch_tokens, student_masks_flat):
        """Loss over all patches of [B, N, K] tokens, averaged over the masked ones ([B, N] mask) per image."""
        loss = lossfunc(teacher_patch_tokens, student_patch_tokens, self.student_temp)  # [B, N]
        masks = student_masks_flat.float()
        loss = torch.sum(loss * masks, dim=-1) / masks.sum(dim=-1).clamp(min=1.0)  # [B]
        return -loss.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked,
        teacher_patch_tokens_masked,
        student_masks_flat,
        n_masked_patches=None,
        masks_weight=None,
    ):
        """Loss on already-selected masked patches.

        Args:
            student_patch_tokens_masked: [M, K] student logits of the masked patches (row-major mask order).
            teacher_patch_tokens_masked: [M, K] teacher probabilities of the same patches.
            student_masks_flat: [B, N] bool mask.
            n_masked_patches: keep only the first n rows (None: all).
            masks_weight: [M] per-patch weights; default 1 / (masked patches of its image).

        Returns:
            Scalar: -sum(weight * t . log_softmax(s / T)) / B.
        """
        loss = lossfunc(teacher_patch_tokens_masked, student_patch_tokens_masked, self.student_temp)  # [M]
        if masks_weight is None:
            masks = student_masks_flat.bool()
            per_image = 1 / masks.sum(-1).clamp(min=1.0)  # [B]
            masks_weight = per_image.unsqueeze(-1).expand_as(masks)[masks]  # [M]
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
        loss = loss * masks_weight
        return -loss.sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens):
        """Start the EMA center update with teacher patch logits [B, N, K] (reduced asynchronously)."""
        self.reduce_center_update(teacher_patch_tokens)

    @torch.no_grad()
    def reduce_center_update(self, teacher_patch_tokens):
        """Sum the per-image mean patch logits and launch the (async) all-reduce over the group."""
        batch_sum = torch.sum(teacher_patch_tokens.float().mean(1), dim=0, keepdim=True)  # [1, K]
        self._launch_center_reduce(batch_sum, len(teacher_patch_tokens))

"""Soft-target cross-entropy sum_k t_k * log softmax(s / T)_k with a lean backward, over the last dim.

The official code writes it as `torch.sum(t.float() * F.log_softmax(s.float() / temp), -1)`, which on
iBOT's [masked patches, 65,536] logits allocates and walks six full-size temporaries forward and
backward (cast, division, log-softmax, product, and each one's gradient). Here the forward keeps one
buffer (the log-probabilities, needed by the backward) and the backward works in place on it:

    d/ds_k = (softmax(s / T)_k * sum_j t_j - t_k) / T    (times the incoming per-row gradient)

The result is the same float32 formula; logits may be bf16 (upcast exactly) and their gradient is
returned in their dtype, as the official cast's backward does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _SoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temp: float) -> Tensor:
        scaled = logits.to(torch.float32, copy=True).div_(temp)  # [N, K]
        log_probs = F.log_softmax(scaled, dim=-1)  # [N, K]
        del scaled
        targets = targets.float()
        per_row = torch.bmm(targets.unsqueeze(1), log_probs.unsqueeze(2)).view(-1)  # [N], sum_k t * log p
        ctx.temp, ctx.logits_dtype = temp, logits.dtype
        ctx.save_for_backward(log_probs, targets)
        return per_row

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        log_probs, targets = ctx.saved_tensors  # [N, K] each
        scale = (grad_out.float() / ctx.temp).unsqueeze(1)  # [N, 1]
        grad = log_probs.exp()  # [N, K], softmax(s / T); the saved buffer is left intact (double backward)
        grad.mul_(targets.sum(dim=-1, keepdim=True)).sub_(targets).mul_(scale)  # d(-loss)/ds = p * sum t - t
        return grad.neg_().to(ctx.logits_dtype), None, None


def soft_cross_entropy(targets: Tensor, logits: Tensor, temp: float) -> Tensor:
    """Per-row sum_k targets_k * log softmax(logits / temp)_k in float32; [..., K] x [..., K] -> [...]
    (shapes broadcast as in the official product).

    Gradients flow to `logits` only (the targets are teacher outputs); same value and gradient as
    `torch.sum(targets.float() * F.log_softmax(logits.float() / temp, dim=-1), dim=-1)`.
    """
    try:
        shape = torch.broadcast_shapes(targets.shape, logits.shape)  # as the official product broadcasts
    except RuntimeError:
        shape = None
    if shape is None or logits.ndim == 0 or shape[-1] != logits.shape[-1]:
        raise ValueError(f"expected targets and logits [..., K] of broadcastable shapes, got {tuple(targets.shape)} "
                         f"and {tuple(logits.shape)}")
    k = shape[-1]
    rows = _SoftCrossEntropy.apply(logits.expand(shape).reshape(-1, k), targets.detach().expand(shape).reshape(-1, k),
                                   temp)  # [N]
    return rows.view(shape[:-1])

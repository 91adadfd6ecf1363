"""Soft-target cross-entropy sum_k t_k * log softmax(s / T)_k over the last dim, row chunk by row chunk.

The official code writes it as `torch.sum(t.float() * F.log_softmax(s.float() / temp), -1)`, which on
iBOT's [masked patches, 65,536] logits allocates six full-size float32 temporaries forward and backward
(cast, division, log-softmax, product, and their gradients) and keeps the log-probabilities [N, K] for the
backward. Here:

    forward:  loss_n = sum_k t_nk * x_nk - (sum_k t_nk) * logsumexp_k(x_n),   x = s / T
    backward: d loss_n / d s_nk = (t_nk - softmax(x_n)_k * sum_j t_nj) / T

computed over a few rows at a time, so that every temporary is a few MiB (cache-sized on CPU, and below
the size at which the C allocator maps fresh pages, which then cost a page fault per 4 KiB), and only the
logits (already alive), the targets and one float per row are kept for the backward. The only [N, K]
allocation is the gradient, in the logits' dtype. Same formula in float32; logits may be bf16 (upcast
exactly); their gradient comes back in their dtype, as the official cast's backward does.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_BYTES = {"cpu": 8 * 2**20}  # float32 bytes per row chunk; other devices: 1 GiB (few, large kernels)
_DEFAULT_CHUNK_BYTES = 2**30


def _row_chunks(n_rows: int, n_cols: int, device: torch.device) -> list[tuple[int, int]]:
    rows = max(1, CHUNK_BYTES.get(device.type, _DEFAULT_CHUNK_BYTES) // (4 * max(n_cols, 1)))
    return [(r, min(r + rows, n_rows)) for r in range(0, n_rows, rows)]


class _SoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temp: float) -> Tensor:
        n, k = logits.shape
        targets = targets.float()
        target_mass = targets.sum(dim=-1)  # [N], 1 for probability rows
        out = logits.new_empty(n, dtype=torch.float32)  # [N]
        lse = logits.new_empty(n, dtype=torch.float32)  # [N]
        for r0, r1 in _row_chunks(n, k, logits.device):
            x = logits[r0:r1].to(torch.float32, copy=True).div_(temp)  # [rows, K]
            lse[r0:r1] = torch.logsumexp(x, dim=-1)
            dot = torch.bmm(targets[r0:r1].unsqueeze(1), x.unsqueeze(2)).view(-1)  # [rows], sum_k t * x
            out[r0:r1] = dot - target_mass[r0:r1] * lse[r0:r1]
        ctx.temp = temp
        ctx.save_for_backward(logits, targets, target_mass, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, targets, target_mass, lse = ctx.saved_tensors
        scale = grad_out.float() / ctx.temp  # [N]
        grad = torch.empty_like(logits)  # [N, K], the logits' dtype
        n, k = logits.shape
        for r0, r1 in _row_chunks(n, k, logits.device):
            p = logits[r0:r1].to(torch.float32, copy=True).div_(ctx.temp)  # [rows, K]
            p.sub_(lse[r0:r1, None]).exp_()  # softmax(x)
            p.mul_(target_mass[r0:r1, None]).sub_(targets[r0:r1]).mul_(-scale[r0:r1, None])  # (t - p * sum t) / T
            grad[r0:r1] = p
        return grad, None, None


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

"""Sinkhorn-Knopp teacher centering shared by the DINO and iBOT losses (SwAV / DINOv2 / DINOv3).

The assignment matrix Q = exp(logits / T) is alternately normalised so that every prototype gets
the same total mass (1/K) and every sample has mass 1/B, summed over all ranks of `group`.

Numerical safety (deviation from the official code, same result in exact arithmetic): the official
code computes exp(logits / T) directly, which overflows to inf (then NaN) for large logits or a low
temperature, and underflows to an all-zero column (0/0, NaN for the whole global batch) for a sample
far below the others. Here the first (row, column) round runs in the log domain:
- every prototype's logits are shifted by their maximum over the *global* batch (one extra
  all-reduce of K values; a per-row constant is cancelled exactly by the row normalisation), so the
  row sums lie in [1, B];
- the column normalisation is a softmax over prototypes, which subtracts each column's maximum.
After that round every row and column holds an entry of at least about 1 / (K * B^2), so the
remaining rounds use the official in-place scaling. The official first division by the total sum
is dropped: the row normalisation cancels it exactly.
"""

import torch

from dinov3_us import distributed


@torch.no_grad()
def sinkhorn_knopp(
    teacher_output: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_samples: int | torch.Tensor | None = None,
    group=None,
) -> torch.Tensor:
    """Balanced soft assignment of samples to prototypes.

    Args:
        teacher_output: teacher logits of this rank, [B_local, K] (any float dtype; computed in float32).
        teacher_temp: teacher temperature T (> 0).
        n_iterations: number of (row, column) normalisation rounds.
        n_samples: number of samples B over all ranks of `group`. None: B_local * world_size (every rank
            holds the same number of rows). A tensor is summed over the ranks (per-rank counts, as iBOT's
            `n_masked_patches_tensor`); it is not modified in place.
        group: process group of the reductions; None is the default group.

    Returns:
        Assignment probabilities [B_local, K], float32; every row sums to 1.
    """
    if teacher_temp <= 0:
        raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    logits = teacher_output.float()  # [B_local, K]
    n_local, n_prototypes = logits.shape
    if isinstance(n_samples, torch.Tensor):
        total = n_samples.detach().to(device=logits.device, dtype=torch.float32).reshape(-1).sum()  # clone
        n_total = distributed.all_reduce_(total, group=group)  # [], B over all ranks
    elif n_samples is None:
        n_total = n_local * distributed.get_world_size(group)
    else:
        n_total = n_samples

    # Round 1 in the log domain: A = (x - m) / T with m the per-prototype max over the global batch, so
    # exp(A) <= 1 and every row holds a 1: the row sums cannot overflow nor vanish.
    if n_local > 0:
        row_max = logits.amax(dim=0)  # [K]
    else:  # no rows here (iBOT ranks may hold no masked patch): still join the collectives
        row_max = logits.new_full((n_prototypes,), float("-inf"))
    distributed.all_reduce_(row_max, op="max", group=group)
    log_q = (logits - row_max).div_(teacher_temp).t()  # [K, B_local], <= 0
    row_sums = distributed.all_reduce_(torch.exp(log_q).sum(dim=1, keepdim=True), group=group)  # [K, 1], >= 1
    log_q -= torch.log(row_sums)  # rows: mass 1/K each (up to the constant log K, cancelled below)
    # columns: softmax over prototypes (max-subtracted) gives mass 1/B per sample, even for a sample
    # whose every exp(.) would underflow in float32
    q = torch.softmax(log_q, dim=0)  # [K, B_local]
    del log_q
    q /= n_total
    for _ in range(n_iterations - 1):
        # from here entries are bounded below by about 1 / (K * B^2): plain scaling is safe
        sum_of_rows = distributed.all_reduce_(q.sum(dim=1, keepdim=True), group=group)  # [K, 1]
        q /= sum_of_rows
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)  # [1, B_local], columns are local: no reduction
        q /= n_total
    q *= n_total  # columns sum to 1: an assignment per sample
    return q.t()  # [B_local, K]

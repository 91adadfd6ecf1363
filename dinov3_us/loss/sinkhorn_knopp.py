"""Sinkhorn-Knopp teacher centering shared by the DINO and iBOT losses (SwAV / DINOv2 / DINOv3).

The assignment matrix Q = exp(logits / T) is alternately normalised so that every prototype gets
the same total mass (1/K) and every sample has mass 1/B, summed over all ranks of `group`.

How it is computed here (same result as the official code in exact arithmetic; float32 results agree
to ~1e-7):
- Stabilise once: every prototype's logits are shifted by their maximum over the *global* batch
  (one all-reduce of K values). A per-prototype factor is cancelled exactly by the first prototype
  normalisation, and after the shift E = exp((logits - max) / T) cannot overflow: every entry is
  <= 1 and every prototype holds a 1 (the official exp(logits / T) overflows to inf, then NaN, for
  large logits or a low temperature).
- Then iterate in the linear domain without touching E: the normalised matrix is Q = diag(v) E diag(u)
  for a per-sample scale v [B] and a per-prototype scale u [K], and each normalisation only needs the
  row or column sums of E weighted by the other scale: one matrix-vector product each, instead of the
  official element-wise divisions over the whole [B, K] matrix. E is written once and Q once.
- A sample whose every entry of E underflows (a sample far below the others for every prototype,
  which would be 0/0 = NaN for the whole global batch in the official code) has its row recomputed
  in the log domain at its first normalisation (a local operation: every rank runs the same
  collectives whatever its data). After the first round every row and column of Q holds an entry of
  at least about 1 / (K * B^2), so the later rounds cannot underflow.
The official first division by the total sum is dropped: the first prototype normalisation cancels it.
"""

import torch

from dinov3_us import distributed

# A sample whose weighted row sum of E falls below this is recomputed in the log domain: far above
# float32's smallest normal number (1.2e-38), so entries lost to underflow cannot matter to the sum.
_UNDERFLOW = 1e-30


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
        n_iterations: number of (prototype, sample) normalisation rounds.
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
    logits = teacher_output  # [B_local, K]
    n_local, n_prototypes = logits.shape
    if isinstance(n_samples, torch.Tensor):
        total = n_samples.detach().to(device=logits.device, dtype=torch.float32).reshape(-1).sum()  # clone
        n_total = distributed.all_reduce_(total, group=group)  # [], B over all ranks
    elif n_samples is None:
        n_total = n_local * distributed.get_world_size(group)
    else:
        n_total = n_samples

    if n_local > 0:
        proto_max = logits.amax(dim=0).float()  # [K]
    else:  # no rows here (iBOT ranks may hold no masked patch): still join the collectives
        proto_max = logits.new_full((n_prototypes,), float("-inf"), dtype=torch.float32)
    distributed.all_reduce_(proto_max, op="max", group=group)
    exps = logits.to(torch.float32, copy=True).sub_(proto_max).div_(teacher_temp).exp_()  # [B_local, K], (0, 1]
    v = exps.new_ones(n_local)  # [B_local] per-sample scale
    for it in range(n_iterations):
        # prototypes: mass 1/K each, summed over all ranks
        proto_sums = distributed.all_reduce_(torch.mv(exps.t(), v), group=group)  # [K], >= 1 at it == 0
        u = proto_sums.mul_(n_prototypes).reciprocal_()  # [K] per-prototype scale
        # samples: mass 1/B each (rows are local: no reduction)
        sample_sums = torch.mv(exps, u)  # [B_local]
        if it == 0:
            _rescale_underflowed_rows(exps, sample_sums, logits, proto_max, teacher_temp, u)
        v = sample_sums.mul_(n_total).reciprocal_()  # [B_local]
    # Q = B * diag(v) E diag(u): every row sums to 1, an assignment per sample
    return exps.mul_(u).mul_(v.mul_(n_total).unsqueeze(1))  # [B_local, K]


def _rescale_underflowed_rows(exps: torch.Tensor, sample_sums: torch.Tensor, logits: torch.Tensor,
                              proto_max: torch.Tensor, teacher_temp: float, u: torch.Tensor) -> None:
    """Rows of `exps` whose weighted sum underflowed become exps / sum, computed in the log domain; sums -> 1."""
    bad = (sample_sums < _UNDERFLOW).nonzero().flatten()  # [n_bad], almost always empty
    if bad.numel() == 0:
        return
    # float64: these log values are in the thousands, where float32 keeps only ~3 decimals of their differences
    log_e = (logits[bad].double() - proto_max.double()) / teacher_temp  # [n_bad, K]
    log_sum = torch.logsumexp(log_e + torch.log(u.double()), dim=1, keepdim=True)  # [n_bad, 1], log of the true sum
    exps[bad] = torch.exp(log_e - log_sum).float()  # entries <= 1 / u_k: no overflow
    sample_sums[bad] = 1.0

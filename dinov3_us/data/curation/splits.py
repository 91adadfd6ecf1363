"""Patient-level splits: seeded, stratified by each group's majority label, and a disjointness check.

Groups (patients, subjects) are never cut: every image of a group lands in the split of its group.
`split_groups` draws `round(fraction * n_groups)` groups per split; within that total each stratum
(the groups whose majority label is the same) contributes in proportion to its size (largest
remainders), so the label mix of every split follows the whole. The draw depends only on the set of
groups, their labels and the seed, never on file order.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from dinov3_us.data.curation.records import Record, natural_key
from dinov3_us.errors import DataError


def majority_label(labels: Sequence[str | None], order: Sequence[str] = ()) -> str | None:
    """Most frequent label; ties go to the label earliest in `order` (then alphabetical)."""
    counts = Counter(labels)
    rank = {lab: i for i, lab in enumerate(order)}
    return min(counts, key=lambda lab: (-counts[lab], rank.get(lab, len(rank)), str(lab)))


def _allocate(target: int, sizes: dict, frac: float) -> dict:
    """Split `target` over strata in proportion to `sizes` (largest-remainder rounding, capped by size)."""
    ideal = {s: frac * n for s, n in sizes.items()}
    quota = {s: min(math.floor(v), sizes[s]) for s, v in ideal.items()}
    order = sorted(sizes, key=lambda s: (-(ideal[s] - math.floor(ideal[s])), str(s)))
    while sum(quota.values()) < target and any(quota[s] < sizes[s] for s in order):
        for s in order:
            if sum(quota.values()) < target and quota[s] < sizes[s]:
                quota[s] += 1
    return quota


def split_groups(
    group_labels: Mapping[str, Sequence[str | None]],
    fractions: Mapping[str, float],
    seed: int,
    rest: str = "train",
    label_order: Sequence[str] = (),
) -> dict[str, str]:
    """Assign each group to a split.

    Args:
        group_labels: group id -> labels of its images (None for unlabelled).
        fractions: split name -> fraction of the groups it gets (e.g. {"val": 0.2}); the rest go to
            `rest`. Splits are drawn in the given order.
        seed: seed of the draw (the study's protocol uses 42).
        rest: split of the groups not drawn.
        label_order: tie-break order for majority labels.

    Returns:
        group id -> split name.
    """
    if sum(fractions.values()) > 1 or any(f < 0 for f in fractions.values()):
        raise DataError(f"split fractions must be >= 0 and sum to <= 1, got {dict(fractions)}")
    strata: dict = defaultdict(list)
    for group in sorted(group_labels, key=natural_key):
        strata[str(majority_label(group_labels[group], label_order))].append(group)
    rng = random.Random(seed)
    for name in sorted(strata):
        rng.shuffle(strata[name])
    n_total = len(group_labels)
    assignment: dict[str, str] = {}
    for split, frac in fractions.items():
        sizes = {s: len(g) for s, g in strata.items()}
        quota = _allocate(round(frac * n_total), sizes, frac * n_total / max(sum(sizes.values()), 1))
        for s, k in quota.items():
            assignment.update({g: split for g in strata[s][:k]})
            strata[s] = strata[s][k:]
    for groups in strata.values():
        assignment.update({g: rest for g in groups})
    return assignment


def assign_by_group(records: Iterable[Record], fractions: Mapping[str, float], seed: int, **kwargs) -> None:
    """Set `record.split` in place for records whose split is `rest` (default 'train'), group by group."""
    rest = kwargs.get("rest", "train")
    pool = [r for r in records if r.split == rest]
    labels: dict[str, list] = defaultdict(list)
    for r in pool:
        labels[r.group].append(r.label)
    assignment = split_groups(labels, fractions, seed, **kwargs)
    for r in pool:
        r.split = assignment[r.group]


def check_disjoint(records: Iterable[Record]) -> None:
    """Raise `DataError` when a patient/subject has images in two splits (records without group are ignored)."""
    splits: dict[str, set] = defaultdict(set)
    for r in records:
        if r.group is not None:
            splits[r.group].add(r.split)
    shared = sorted((g for g, s in splits.items() if len(s) > 1), key=natural_key)
    if shared:
        examples = ", ".join(f"{g} in {sorted(splits[g])}" for g in shared[:5])
        raise DataError(f"{len(shared)} patient(s)/subject(s) appear in two splits: {examples}")

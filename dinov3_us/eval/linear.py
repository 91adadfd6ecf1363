"""A grid of linear heads trained together on frozen features (the DINOv2/v3 linear-probe protocol).

The grid is learning rates x n_last_blocks x avgpool (x loss). Heads that read the same input
(n_last_blocks, avgpool) are one stacked weight [H_g, C, D_in], so one batch is one einsum per input
type for all heads; the summed loss gives each head its own gradient. The optimiser is SGD with
momentum (wd, cosine schedule to 0 over all iterations) applied per head with that head's learning
rate, written out on the stacked tensors: each head follows exactly `torch.optim.SGD(momentum=m,
weight_decay=wd)` with `CosineAnnealingLR`. Learning rates are scaled by batch_size / 256. With
`patience`, every head is scored on val after each epoch, keeps its best weights, and stops after
`patience` epochs without improvement. The best head is the one with the highest val score.

Features come from a *source* with `targets`, `__len__` and `get(indices) -> {"cls", "patch_mean"}`:
`CachedFeatures` (the protocol) or, for the benchmark, a source that runs the backbone every time.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from dinov3_us.errors import ConfigError, DataError
from dinov3_us.eval.config import LinearConfig
from dinov3_us.eval.features import FeatureSet, linear_input
from dinov3_us.eval.metrics import batched_scores

logger = logging.getLogger("dinov3_us")

LOSS_IDS = {"ce": 0, "focal": 1, "label_smoothing": 2}
# A train split of a few hundred images is one or two batches: one pass per epoch would train a head for ten
# steps, which leaves it near its initialisation (and a comparison with random init to chance).
MIN_ITERATIONS_PER_EPOCH = 10


@dataclass(frozen=True)
class HeadSpec:
    """One linear head of the grid."""

    n_blocks: int
    avgpool: bool
    lr: float  # as configured, before the batch-size scaling
    loss: str = "ce"

    @property
    def name(self) -> str:
        """e.g. `blocks4_avgpool_lr0.001_ce`."""
        return f"blocks{self.n_blocks}_{'avgpool' if self.avgpool else 'cls'}_lr{self.lr:g}_{self.loss}"

    def describe(self) -> dict:
        """Plain fields (for results.json)."""
        return {"name": self.name, "n_last_blocks": self.n_blocks, "avgpool": self.avgpool, "lr": self.lr,
                "loss": self.loss}


def make_grid(cfg: LinearConfig, depth: int | None = None) -> list[HeadSpec]:
    """Every (n_last_blocks, avgpool, loss, lr) combination, grouped by input; n_last_blocks > depth is an error."""
    if not cfg.learning_rates or not cfg.n_last_blocks or not cfg.avgpool or not cfg.losses:
        raise ConfigError("linear.learning_rates, n_last_blocks, avgpool and losses must each list >= 1 value")
    bad = [n for n in cfg.n_last_blocks if n < 1 or (depth is not None and n > depth)]
    if bad:
        raise ConfigError(f"linear.n_last_blocks {bad} must lie in 1..{depth} (the backbone's depth)")
    if any(lr <= 0 for lr in cfg.learning_rates):
        raise ConfigError(f"linear.learning_rates must be > 0, got {cfg.learning_rates}")
    return [HeadSpec(n, a, lr, loss) for n in sorted(set(cfg.n_last_blocks)) for a in sorted(set(cfg.avgpool))
            for loss in dict.fromkeys(cfg.losses) for lr in sorted(set(cfg.learning_rates))]


class LinearHeadGrid(nn.Module):
    """All heads of a grid; `forward(feats) -> logits [H, B, C]` in spec order (specs must be grouped by input)."""

    def __init__(self, specs: list[HeadSpec], embed_dim: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.specs = list(specs)
        self.inputs: list[tuple[int, bool]] = list(dict.fromkeys((s.n_blocks, s.avgpool) for s in self.specs))
        order = [(s.n_blocks, s.avgpool) for s in self.specs]
        if order != sorted(order, key=self.inputs.index):
            raise ValueError("head specs must be grouped by (n_blocks, avgpool)")
        gen = torch.Generator().manual_seed(seed)
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        self.sizes = []
        for n, avgpool in self.inputs:
            h = sum(1 for s in self.specs if (s.n_blocks, s.avgpool) == (n, avgpool))
            d_in = (n + int(avgpool)) * embed_dim
            self.weights.append(nn.Parameter(torch.randn(h, num_classes, d_in, generator=gen) * 0.01))  # [H_g, C, D]
            self.biases.append(nn.Parameter(torch.zeros(h, num_classes)))  # [H_g, C]
            self.sizes.append(h)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        out = []
        for (n, avgpool), w, b in zip(self.inputs, self.weights, self.biases):
            x = linear_input(feats, n, avgpool)  # [B, D_in]
            logits = x @ w.flatten(0, 1).T  # one GEMM for the group: [B, H_g * C]
            out.append(logits.view(len(x), *w.shape[:2]).transpose(0, 1) + b[:, None, :])  # [H_g, B, C]
        return torch.cat(out)  # [H, B, C]

    def head_state(self, h: int) -> dict[str, Tensor]:
        """Weight [C, D_in] and bias [C] of head `h`."""
        g, j = self._locate(h)
        return {"weight": self.weights[g][j].detach().clone(), "bias": self.biases[g][j].detach().clone()}

    def _locate(self, h: int) -> tuple[int, int]:
        for g, size in enumerate(self.sizes):
            if h < size:
                return g, h
            h -= size
        raise IndexError(h)


def grid_loss(
    logits: Tensor, y: Tensor, kinds: Tensor, class_weight: Tensor | None, gamma: float, eps: float
) -> Tensor:
    """Sum over heads of each head's (class-weighted) mean loss; logits [H, B, C], y [B], kinds [H]."""
    logp = F.log_softmax(logits.float(), dim=-1)  # [H, B, C]
    nll = -logp.gather(-1, y.expand(logits.shape[0], -1)[..., None]).squeeze(-1)  # [H, B]
    smooth = -logp.mean(-1)  # [H, B]: cross-entropy against the uniform distribution
    focal = (1.0 - torch.exp(-nll)).clamp_min(0.0).pow(gamma) * nll
    per = torch.where(kinds[:, None] == 0, nll, torch.where(kinds[:, None] == 1, focal, (1 - eps) * nll + eps * smooth))
    w = class_weight[y] if class_weight is not None else torch.ones_like(nll[0])  # [B]
    return ((per * w).sum(1) / w.sum()).sum()


def class_weights(targets: np.ndarray, num_classes: int) -> Tensor:
    """Balanced weights N / (C * count_c) (0 for absent classes)."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    w = np.divide(len(targets), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(w, dtype=torch.float32)


class CachedFeatures:
    """A feature source over a `FeatureSet` held in memory (on `device`: the heads train where the features are)."""

    def __init__(self, fs: FeatureSet, device: torch.device | str = "cpu"):
        self.fs, self.targets, self.device = fs, fs.targets, torch.device(device)
        self.cls, self.patch_mean = fs.tensors["cls"].to(self.device), fs.tensors["patch_mean"].to(self.device)

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, indices: Tensor) -> dict[str, Tensor]:
        """Features of rows `indices`."""
        indices = indices.to(self.device)
        return {"cls": self.cls[indices], "patch_mean": self.patch_mean[indices]}


@torch.no_grad()
def predict_grid(grid: LinearHeadGrid, source, batch_size: int = 1024) -> Tensor:
    """Class predictions of every head on every sample of `source`, [H, N]."""
    preds = []
    for start in range(0, len(source), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(source)))
        preds.append(grid(source.get(idx)).argmax(-1).cpu())  # [H, B]
    return torch.cat(preds, dim=1) if preds else torch.zeros((len(grid.specs), 0), dtype=torch.long)


@dataclass
class GridResult:
    """A trained grid: val scores, the best head, per-head best epochs, timing."""

    grid: LinearHeadGrid
    val_scores: np.ndarray  # [H]
    best: int
    best_epochs: list[int]
    epochs_run: int
    iterations: int
    seconds: float
    history: list[float] = field(default_factory=list)  # best val score over heads after each evaluation

    @property
    def best_spec(self) -> HeadSpec:
        """The selected head."""
        return self.grid.specs[self.best]


def _index_stream(n: int, gen: torch.Generator):
    while True:
        yield from torch.randperm(n, generator=gen).tolist()


def train_linear_grid(
    train,
    val,
    specs: list[HeadSpec],
    num_classes: int,
    cfg: LinearConfig,
    *,
    embed_dim: int,
    progress: bool = False,
) -> GridResult:
    """Train every head of `specs` on `train` (a feature source) and score them on `val` with `cfg.select_metric`."""
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"the linear probe needs train and val samples, got {len(train)} and {len(val)}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"linear.epochs and linear.batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    start = time.perf_counter()
    device = getattr(train, "device", torch.device("cpu"))
    grid = LinearHeadGrid(specs, embed_dim, num_classes, seed=cfg.seed).to(device)
    scale = cfg.batch_size / 256 if cfg.scale_lr else 1.0
    lrs = [torch.tensor([s.lr * scale for s in specs[sum(grid.sizes[:g]):sum(grid.sizes[: g + 1])]], device=device)
           for g in range(len(grid.sizes))]  # per group [H_g]
    kinds = torch.tensor([LOSS_IDS[s.loss] for s in specs], device=device)
    y_train = torch.as_tensor(train.targets, dtype=torch.long, device=device)
    cw = class_weights(train.targets, num_classes).to(device) if cfg.class_weighting else None
    iters = cfg.iterations_per_epoch or max(math.ceil(len(train) / cfg.batch_size), MIN_ITERATIONS_PER_EPOCH)
    total = cfg.epochs * iters
    params = [*grid.weights, *grid.biases]
    bufs = [torch.zeros_like(p) for p in params]
    active = torch.ones(len(specs), dtype=torch.bool, device=device)
    best_scores = np.full(len(specs), -np.inf)
    best_epochs = [0] * len(specs)
    best_state = [p.detach().clone() for p in params]
    stale = np.zeros(len(specs), dtype=np.int64)
    gen = torch.Generator().manual_seed(cfg.seed)
    stream = _index_stream(len(train), gen)
    history, step, epoch = [], 0, 0
    bar = tqdm(total=cfg.epochs, desc=f"linear grid ({len(specs)} heads)", unit="epoch", disable=not progress,
               dynamic_ncols=True, mininterval=1.0)
    for epoch in range(1, cfg.epochs + 1):  # noqa: B007 (epoch is reported after the loop)
        for _ in range(iters):
            idx = torch.tensor([next(stream) for _ in range(cfg.batch_size)], device=device)
            loss = grid_loss(grid(train.get(idx)), y_train[idx], kinds, cw, cfg.focal_gamma, cfg.label_smoothing)
            for p in params:
                p.grad = None
            loss.backward()
            factor = 0.5 * (1.0 + math.cos(math.pi * step / total))  # CosineAnnealingLR(T_max=total), eta_min 0
            sgd_step_per_head(grid, bufs, lrs, active, factor, cfg.momentum, cfg.weight_decay)
            step += 1
        if cfg.patience is not None or epoch == cfg.epochs:
            scores = batched_scores(val.targets, predict_grid(grid, val).numpy(), num_classes, cfg.select_metric)
            improved = scores > best_scores
            if cfg.patience is None:
                improved[:] = True
            _keep_best(grid, best_state, improved)
            best_scores = np.where(improved, scores, best_scores)
            for h in np.flatnonzero(improved):
                best_epochs[h] = epoch
            stale = np.where(improved, 0, stale + 1)
            history.append(float(best_scores.max()))
            bar.set_postfix(best_val=f"{best_scores.max():.4f}")
            if cfg.patience is not None:
                active &= torch.as_tensor(stale < cfg.patience, device=device)
                if not bool(active.any()):
                    logger.info("linear grid: every head early-stopped by epoch %d", epoch)
                    bar.update(1)
                    break
        bar.update(1)
    bar.close()
    with torch.no_grad():
        for p, b in zip(params, best_state):
            p.copy_(b)
    best = int(np.argmax(best_scores))
    seconds = time.perf_counter() - start
    logger.info("linear grid: %d heads, %d iterations in %.1f s; best %s (val %s %.4f)", len(specs), step, seconds,
                specs[best].name, cfg.select_metric, best_scores[best])
    return GridResult(grid, best_scores, best, best_epochs, epoch, step, seconds, history)


@torch.no_grad()
def sgd_step_per_head(grid, bufs, lrs, active: Tensor, factor: float, momentum: float, wd: float) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov) with one learning rate per head.

    `grid` has `weights` / `biases` (one stacked [H_g, ...] tensor per group) and `sizes` ([H_g]);
    `lrs` holds one [H_g] tensor of learning rates per group, `active` [H] masks early-stopped heads.
    """
    offsets = np.cumsum([0, *grid.sizes])
    n_groups = len(grid.sizes)
    for i, p in enumerate([*grid.weights, *grid.biases]):
        g = i % n_groups
        lr = lrs[g] * (-factor) * active[offsets[g] : offsets[g + 1]]  # [H_g], negated: p += lr * buf
        buf = bufs[i].mul_(momentum).add_(p.grad)
        if wd:
            buf.add_(p, alpha=wd)
        p.addcmul_(lr.view(-1, *([1] * (p.ndim - 1))), buf)


@torch.no_grad()
def _keep_best(grid: LinearHeadGrid, best_state: list[Tensor], improved: np.ndarray) -> None:
    offsets = np.cumsum([0, *grid.sizes])
    n_groups = len(grid.sizes)
    for i, p in enumerate([*grid.weights, *grid.biases]):
        g = i % n_groups
        mask = torch.as_tensor(improved[offsets[g] : offsets[g + 1]], device=p.device)
        best_state[i][mask] = p[mask]


def subsample_by_group(targets: np.ndarray, groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """Indices of the samples of a `fraction` of the groups (patients), drawn per majority label (>= 1 each)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"linear.label_fractions values must lie in (0, 1], got {fraction}")
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    if fraction == 1:
        return np.arange(len(targets))
    strata: dict[int, list[str]] = {}
    for g, members in by_group.items():
        majority = int(np.bincount(targets[members]).argmax())
        strata.setdefault(majority, []).append(g)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(strata):
        names = sorted(strata[label])
        k = max(1, round(fraction * len(names)))
        chosen += [names[j] for j in rng.choice(len(names), size=k, replace=False)]
    return np.sort(np.concatenate([by_group[g] for g in chosen]))

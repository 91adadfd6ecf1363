"""Dense linear probe: a per-patch linear classifier on frozen patch tokens, for binary masks (HC18 heads).

Each head maps a patch token [D_in] (the last n blocks concatenated) to 2 logits (background,
foreground); the logit map [2, h, w] is bilinearly upsampled to the mask resolution [S, S] and trained
with per-pixel cross-entropy. A grid of learning rates is trained together (stacked weights, per-head
SGD as the linear probe), the best head is the one with the highest mean per-image Dice on val.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from dinov3_us.data.augment.image_ops import match_channels, to_float_tensor
from dinov3_us.errors import ConfigError, DataError
from dinov3_us.eval.config import SegmentationConfig
from dinov3_us.eval.features import FeatureSet
from dinov3_us.eval.linear import sgd_step_per_head
from dinov3_us.eval.metrics import dice_iou

logger = logging.getLogger("dinov3_us")


class SegHeadGrid(nn.Module):
    """H per-patch linear heads: `forward(tokens [B, HW, D]) -> logits [H, B, 2, h, w]`."""

    def __init__(self, n_heads: int, dim: int, grid_hw: int, num_classes: int = 2, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.grid_hw = grid_hw
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(n_heads, num_classes, dim, generator=gen) * 0.01)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(n_heads, num_classes))])
        self.sizes = [n_heads]

    def forward(self, tokens: Tensor) -> Tensor:
        B, HW, _ = tokens.shape
        logits = torch.einsum("bnd,hcd->hbcn", tokens, self.weights[0]) + self.biases[0][:, None, :, None]
        return logits.reshape(*logits.shape[:3], self.grid_hw, HW // self.grid_hw)  # [H, B, 2, h, w]


@dataclass
class SegResult:
    """A trained dense-probe grid and its val selection."""

    grid: SegHeadGrid
    learning_rates: list[float]
    val_scores: np.ndarray  # [H] mean per-image Dice on val
    best: int
    seconds: float
    image_size: int
    threshold: int


def _upsampled(grid: SegHeadGrid, tokens: Tensor, size: int) -> Tensor:
    logits = grid(tokens)  # [H, B, 2, h, w]
    H, B = logits.shape[:2]
    up = F.interpolate(logits.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False)
    return up.reshape(H, B, *up.shape[1:])  # [H, B, 2, S, S]


def train_segmentation_grid(train: FeatureSet, val: FeatureSet, cfg: SegmentationConfig, *, grid_hw: int,
                            progress: bool = False) -> SegResult:
    """Train one head per learning rate on `train` patch tokens / masks, score them by mean Dice on `val`."""
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"the dense probe needs train and val samples, got {len(train)} and {len(val)}")
    if not cfg.learning_rates or any(lr <= 0 for lr in cfg.learning_rates) or cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError("segmentation.learning_rates must be > 0 and epochs / batch_size >= 1")
    start = time.perf_counter()
    tokens, masks = train.tensors["patch_tokens"], train.tensors["masks"]  # [N, HW, D], [N, S, S]
    size, lrs_cfg = masks.shape[-1], sorted(set(cfg.learning_rates))
    grid = SegHeadGrid(len(lrs_cfg), tokens.shape[-1], grid_hw, seed=cfg.seed)
    scale = cfg.batch_size / 256 if cfg.scale_lr else 1.0
    lrs = [torch.tensor(lrs_cfg) * scale]
    active = torch.ones(len(lrs_cfg), dtype=torch.bool)
    bufs = [torch.zeros_like(p) for p in [*grid.weights, *grid.biases]]
    iters = math.ceil(len(train) / cfg.batch_size)
    total, step = cfg.epochs * iters, 0
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(cfg.epochs), desc=f"dense probe ({len(lrs_cfg)} heads)", unit="epoch",
                  disable=not progress, dynamic_ncols=True, mininterval=1.0):
        perm = torch.randperm(len(train), generator=gen)
        for b in range(iters):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            target = (masks[idx] >= cfg.foreground_threshold).long()  # [B, S, S]
            logits = _upsampled(grid, tokens[idx], size)  # [H, B, 2, S, S]
            H = logits.shape[0]
            loss = F.cross_entropy(logits.flatten(0, 1), target.repeat(H, 1, 1), reduction="none")  # [H * B, S, S]
            loss = loss.reshape(H, -1).mean(1).sum()
            for p in [*grid.weights, *grid.biases]:
                p.grad = None
            loss.backward()
            factor = 0.5 * (1.0 + math.cos(math.pi * step / total))
            sgd_step_per_head(grid, bufs, lrs, active, factor, cfg.momentum, cfg.weight_decay)
            step += 1
    result = SegResult(grid, lrs_cfg, np.zeros(len(lrs_cfg)), 0, 0.0, size, cfg.foreground_threshold)
    truth = val.tensors["masks"].numpy() >= cfg.foreground_threshold
    for h in range(len(lrs_cfg)):
        result.val_scores[h] = dice_iou(predict_masks(result, val, h), truth)[0].mean()
    result.best = int(np.argmax(result.val_scores))
    result.seconds = time.perf_counter() - start
    logger.info("dense probe: %d heads, %d iterations in %.1f s; best lr %g (val Dice %.4f)", len(lrs_cfg), step,
                result.seconds, lrs_cfg[result.best], result.val_scores[result.best])
    return result


@torch.no_grad()
def predict_masks(result: SegResult, fs: FeatureSet, head: int, batch_size: int = 32) -> np.ndarray:
    """Foreground masks [N, S, S] (bool) predicted by head `head`."""
    tokens = fs.tensors["patch_tokens"]
    out = np.zeros((len(fs), result.image_size, result.image_size), dtype=bool)
    for start in range(0, len(fs), batch_size):
        logits = _upsampled(result.grid, tokens[start : start + batch_size], result.image_size)[head]  # [B, 2, S, S]
        out[start : start + len(logits)] = (logits.argmax(1) == 1).numpy()
    return out


def plot_examples(dataset, pred: np.ndarray, truth: np.ndarray, path, n: int = 4) -> None:
    """A few test images (eval geometry) with the true (green) and predicted (red) mask outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(pred))
    if n == 0:
        return
    dice = dice_iou(pred[:n], truth[:n])[0]
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        image = match_channels(to_float_tensor(dataset.base[i][0]), 1)
        image = dataset.transform.geometry(image)[0].numpy()  # [S, S] in [0, 1]
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        for mask, colour in ((truth[i], "lime"), (pred[i], "red")):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
        ax.set_title(f"{dataset.keys[i][-18:]}\nDice {dice[i]:.3f}", fontsize=8)
        ax.axis("off")
    fig.suptitle("green: reference mask, red: dense linear probe", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Full fine-tuning of the backbone with a linear head: layer-wise lr decay, class weighting, early stopping.

Optimiser: AdamW over `get_params_groups_with_decay` groups (lr x layer_decay ** (depth + 1 - layer),
no weight decay on biases / norms / LayerScale / tokens), linear warm-up then cosine to `min_lr`, lr
scaled by the global batch / 256, gradient clipping. Train images get a random resized crop and a
horizontal flip (seeded per sample and epoch); val/test use the deterministic eval preprocessing.
After each epoch the model is scored on val (`select_metric`); the best state is kept, training
stops after `patience` epochs without improvement, and the best state is evaluated. Under torchrun
the model is wrapped in DistributedDataParallel and each rank takes an equal share of every epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from dinov3_us.data.augment.image_ops import hflip, match_channels, normalize, to_float_tensor
from dinov3_us.data.augment.transforms import RandomResizedCrop
from dinov3_us.data.map_dataset import rank_indices
from dinov3_us.distributed import collective_device, get_rank, get_world_size
from dinov3_us.errors import ConfigError, DataError
from dinov3_us.eval.config import FinetuneConfig
from dinov3_us.eval.data import EvalDataset
from dinov3_us.eval.features import gather_rows
from dinov3_us.eval.linear import class_weights
from dinov3_us.eval.metrics import batched_scores
from dinov3_us.train.optimizer import build_adamw
from dinov3_us.train.param_groups import apply_optim_scheduler, fuse_params_groups, get_params_groups_with_decay
from dinov3_us.train.schedules import cosine_schedule

logger = logging.getLogger("dinov3_us")


class FinetuneModel(nn.Module):
    """Backbone + linear head on [CLS, mean patch token] (or CLS only): images [B, C, S, S] -> logits [B, C_out]."""

    def __init__(self, backbone: nn.Module, num_classes: int, avgpool: bool = True):
        super().__init__()
        self.backbone, self.avgpool = backbone, avgpool
        self.head = nn.Linear(backbone.embed_dim * (2 if avgpool else 1), num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone.forward_features(x)
        z = f["x_norm_clstoken"]  # [B, D]
        if self.avgpool:
            z = torch.cat([z, f["x_norm_patchtokens"].mean(1)], dim=1)  # [B, 2D]
        return self.head(z)


class AugmentedSplit(torch.utils.data.Dataset):
    """The train split with a random resized crop + flip drawn from (seed, epoch, index): `ds[i] -> (x, y)`."""

    def __init__(self, ds: EvalDataset, scale: tuple[float, float], hflip_p: float, seed: int):
        self.ds, self.seed, self.hflip_p, self.epoch = ds, seed, hflip_p, 0
        self.crop = RandomResizedCrop(ds.transform.image_size, scale=scale)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        t = self.ds.transform
        img = match_channels(to_float_tensor(self.ds.base[i][0]), t.in_chans)  # [C, H, W]
        img = self.crop(img, rng)  # [C, S, S]
        if rng.random() < self.hflip_p:
            img = hflip(img)
        mean, std = t.norm()
        return normalize(img, mean, std), int(self.ds.targets[i])


class PlainSplit(torch.utils.data.Dataset):
    """`ds[i] -> (x, y)` with the deterministic eval preprocessing."""

    def __init__(self, ds: EvalDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[i][0], int(self.ds.targets[i])


@dataclass
class FinetuneResult:
    """The fine-tuned model (best val state loaded) and its training history."""

    model: FinetuneModel
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    seconds: float
    history: list[dict] = field(default_factory=list)  # per epoch: train loss, val score, lr


@torch.no_grad()
def predict(model: nn.Module, ds: EvalDataset, *, batch_size: int, device, num_workers: int = 0) -> np.ndarray:
    """Class predictions [N] of every sample (each rank predicts its share; gathered in order)."""
    rank, world = get_rank(), get_world_size()
    sizes = [len(rank_indices(len(ds), r, world)) for r in range(world)]
    mine = list(rank_indices(len(ds), rank, world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(PlainSplit(ds), mine), batch_size=batch_size,
                                         num_workers=num_workers)
    was_training = model.training
    model.eval()
    out = [model(x.to(device)).argmax(-1).cpu() for x, _ in loader]
    model.train(was_training)
    local = torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
    gather_device = collective_device(device)
    return gather_rows(local, sizes, gather_device).numpy()


def build_optimizer(model: FinetuneModel, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW over the backbone (layer-wise lr decay, patch-embed multiplier) and the head (lr multiplier 1)."""
    groups = get_params_groups_with_decay(model.backbone, lr_decay_rate=cfg.layer_decay,
                                          patch_embed_lr_mult=cfg.patch_embed_lr_mult)
    for name, p in model.head.named_parameters():
        groups.append({"name": f"head.{name}", "params": p, "lr_multiplier": 1.0,
                       "wd_multiplier": 0.0 if name == "bias" else 1.0, "is_last_layer": False})
    return build_adamw(fuse_params_groups(groups), betas=(0.9, 0.999))


def train_finetune(
    backbone: nn.Module,
    train: EvalDataset,
    val: EvalDataset,
    num_classes: int,
    cfg: FinetuneConfig,
    *,
    device: torch.device,
    eval_batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune `backbone` + a new head on `train`; early-stop on `val`; return the best-val model."""
    rank, world = get_rank(), get_world_size()
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"finetune.epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    if not 0 <= cfg.warmup_epochs <= cfg.epochs:
        raise ConfigError(f"finetune.warmup_epochs must be within [0, finetune.epochs={cfg.epochs}], "
                          f"got {cfg.warmup_epochs}")
    if len(train) < world:
        raise DataError(f"{train.spec}: {len(train)} train samples for {world} processes")
    if len(cfg.crop_scale) != 2 or not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
        raise ConfigError(f"finetune.crop_scale must be [min, max] within (0, 1], got {cfg.crop_scale}")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = FinetuneModel(backbone, num_classes, cfg.avgpool).to(device)
    model.train()
    optimizer = build_optimizer(model, cfg)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    split = AugmentedSplit(train, tuple(cfg.crop_scale), cfg.hflip, cfg.seed) if cfg.augment else PlainSplit(train)
    per_rank = len(train) // world
    iters = math.ceil(per_rank / cfg.batch_size)
    total, warmup = cfg.epochs * iters, cfg.warmup_epochs * iters
    base_lr = cfg.lr * (cfg.batch_size * world / 256 if cfg.scale_lr else 1.0)
    # warm-up base/warmup, 2 base/warmup, ..., base (no step at lr 0), then cosine to min_lr
    lrs = cosine_schedule(base_lr, cfg.min_lr, total, warmup, start_warmup_value=base_lr / max(warmup, 1))  # [total]
    weight = class_weights(train.targets, num_classes).to(device) if cfg.class_weighting else None
    best_score, best_epoch, best_state, stale, history, step = -math.inf, 0, None, 0, [], 0
    stopped = False
    bar = tqdm(total=cfg.epochs, desc="fine-tuning", unit="epoch", disable=not progress or rank > 0,
               dynamic_ncols=True, mininterval=1.0)
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        if isinstance(split, AugmentedSplit):
            split.epoch = epoch
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        mine = perm[rank::world][:per_rank].tolist()  # equal shares: every rank runs the same iterations
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(split, mine), batch_size=cfg.batch_size,
                                             num_workers=num_workers)
        losses = []
        for x, y in loader:
            lr = float(lrs[step])
            apply_optim_scheduler(optimizer, lr, cfg.weight_decay, lr)
            logits = net(x.to(device))
            loss = F.cross_entropy(logits, y.to(device), weight=weight, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        pred = predict(model, val, batch_size=eval_batch_size, device=device, num_workers=num_workers)
        score = float(batched_scores(val.targets, pred[None], num_classes, cfg.select_metric)[0])
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "val_score": score, "lr": lr})
        logger.info("fine-tuning epoch %d: train loss %.4f, val %s %.4f", epoch, history[-1]["train_loss"],
                    cfg.select_metric, score)
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{score:.3f}")
        bar.update(1)
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            stale += 1
            if cfg.patience is not None and stale >= cfg.patience:
                stopped = True
                logger.info("fine-tuning: early stop after epoch %d (best epoch %d)", epoch, best_epoch)
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(model, best_epoch, best_score, epoch, stopped, time.perf_counter() - start, history)

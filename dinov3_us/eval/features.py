"""Frozen-backbone features, computed once per split and kept in memory (and on disk with a cache dir).

Per image: the CLS tokens of the last `n_blocks` blocks (`cls` [N, n_blocks, D], oldest block first,
after the final norm as in the DINOv2/v3 linear protocol), the average-pooled patch tokens of the
last block (`patch_mean` [N, D]) and, for dense probes, the patch tokens of the last blocks
(`patch_tokens` [N, HW, n * D]) and the masks (`masks` [N, S, S] uint8). Under `torchrun` each rank
embeds its contiguous share (`rank_indices`, exact, no padding) and the shares are all-gathered in
order, so every rank ends with the same tensors as a single process would compute.

The disk cache is keyed by everything the features depend on (weights sha256, architecture,
preprocessing, shard files and sample keys, what is extracted): a changed input is a new file, never
a stale hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from dinov3_us.data.map_dataset import rank_indices
from dinov3_us.distributed import collective_device, get_rank, get_world_size
from dinov3_us.eval.data import EvalDataset
from dinov3_us.fileio import atomic_path

logger = logging.getLogger("dinov3_us")

CACHE_VERSION = 1


@dataclass
class FeatureSet:
    """Features of one split, in dataset order, with its targets, groups (patients) and sample keys."""

    tensors: dict[str, Tensor]
    targets: np.ndarray  # [N] int64, -1 = unlabelled
    groups: list[str]
    keys: list[str]
    name: str = ""
    from_cache: bool = False
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, indices) -> FeatureSet:
        """The rows `indices` (a label-efficiency subsample)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return FeatureSet({k: v[idx] for k, v in self.tensors.items()}, self.targets[idx.numpy()],
                          [self.groups[i] for i in idx.tolist()], [self.keys[i] for i in idx.tolist()], self.name)


def gather_rows(local: Tensor, sizes: list[int], device: torch.device) -> Tensor:
    """Concatenate every rank's rows ([sizes[r], ...] on rank r) in rank order, on every rank (CPU result)."""
    if len(sizes) == 1:
        return local.cpu()
    pad = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=device)
    pad[: len(local)] = local.to(device)
    buffers = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(buffers, pad)
    return torch.cat([b[:n].cpu() for b, n in zip(buffers, sizes)])


def cache_key(model_id: dict, dataset: EvalDataset, what: dict) -> str:
    """Hex digest of everything the features of `dataset` depend on."""
    payload = {"version": CACHE_VERSION, "model": model_id, "transform": dataset.transform.describe(),
               "data": dataset.fingerprint(), "what": what}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _shapes(model, image_size: int, n_blocks: int, patch_blocks: int) -> dict[str, tuple[int, ...]]:
    d, hw = model.embed_dim, (image_size // model.patch_size) ** 2
    shapes = {"cls": (n_blocks, d), "patch_mean": (d,)}
    if patch_blocks:
        shapes["patch_tokens"] = (hw, patch_blocks * d)
    return shapes


@torch.inference_mode()
def embed_batch(model, x: Tensor, n_blocks: int, patch_blocks: int = 0) -> dict[str, Tensor]:
    """Features of one batch [B, C, S, S]: `cls` [B, n, D], `patch_mean` [B, D] (+ `patch_tokens` [B, HW, p * D])."""
    outs = model.get_intermediate_layers(x, n=max(n_blocks, patch_blocks), return_class_token=True, norm=True)
    # outs: one (patch [B, HW, D], cls [B, D]) per block, oldest first
    feats = {
        "cls": torch.stack([cls for _, cls in outs[-n_blocks:]], dim=1),  # [B, n, D]
        "patch_mean": outs[-1][0].mean(dim=1),  # [B, D]
    }
    if patch_blocks:
        feats["patch_tokens"] = torch.cat([patch for patch, _ in outs[-patch_blocks:]], dim=-1)  # [B, HW, p * D]
    return feats


def extract_features(
    model,
    dataset: EvalDataset,
    *,
    n_blocks: int = 1,
    patch_blocks: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    model_id: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    name: str = "",
    progress: bool = True,
    lockstep: bool = False,
) -> FeatureSet:
    """Embed every image of `dataset` once with the frozen `model` (already on `device`, in eval mode).

    With `cache_dir`, a file keyed by `model_id` (e.g. weights sha256 + architecture), the data and
    the preprocessing is read if present, else written by rank 0 after extraction. With `lockstep`
    (a model sharded with FSDP2, whose every forward is a collective, or compiled for one shape), every
    rank runs the same number of forwards of exactly `batch_size` images, padded with zeros.
    """
    rank, world = get_rank(), get_world_size()
    device = torch.device(device)
    what = {"n_blocks": n_blocks, "patch_blocks": patch_blocks, "masks": dataset.with_mask}
    path = None
    if cache_dir is not None:
        digest = cache_key(model_id or {}, dataset, what)
        path = Path(cache_dir) / f"features-{name or 'split'}-{digest[:20]}.pt"
        if path.is_file():
            start = time.perf_counter()
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("keys") == dataset.keys:
                logger.info("features of %s (%d samples) read from %s", name or dataset.spec, len(dataset), path)
                return FeatureSet(stored["tensors"], dataset.targets.copy(), list(dataset.groups), list(dataset.keys),
                                  name, True, time.perf_counter() - start, {"cache_file": str(path)})
            logger.warning("%s does not match %s's samples: recomputing", path, dataset.spec)
    start = time.perf_counter()
    sizes = [len(rank_indices(len(dataset), r, world)) for r in range(world)]
    mine = rank_indices(len(dataset), rank, world)
    shapes = _shapes(model, dataset.transform.image_size, n_blocks, patch_blocks)
    local = {k: torch.empty((len(mine), *s)) for k, s in shapes.items()}
    if dataset.with_mask:
        size = dataset.transform.image_size
        local["masks"] = torch.empty((len(mine), size, size), dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(mine)), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers,
                                         generator=torch.Generator())  # not the global RNG a training run uses
    bar = tqdm(total=len(mine), desc=f"features {name or dataset.spec}", unit="img", disable=not progress or rank > 0,
               dynamic_ncols=True, mininterval=1.0)  # rank 0's share: rate and ETA of the whole run
    row = 0
    batches = iter(loader)
    for _ in range(math.ceil(max(sizes) / batch_size) if lockstep else len(loader)):
        batch = next(batches, None)
        x = batch[0].to(device, non_blocking=True) if batch is not None else None  # [B, C, S, S]
        n = 0 if x is None else len(x)
        if lockstep:  # [batch_size, C, S, S]: the same forwards on every rank
            size = dataset.transform.image_size
            pad = torch.zeros((batch_size - n, dataset.transform.in_chans, size, size), device=device)
            x = pad if x is None else torch.cat([x, pad])
        feats = embed_batch(model, x, n_blocks, patch_blocks)
        for k, v in feats.items():
            local[k][row : row + n] = v[:n].float().cpu()
        if dataset.with_mask and n:
            local["masks"][row : row + n] = batch[1]
        row += n
        bar.update(n)
    bar.close()
    gather_device = collective_device(device)
    tensors = {k: gather_rows(v, sizes, gather_device) for k, v in local.items()}
    seconds = time.perf_counter() - start
    logger.info("features of %s: %d samples in %.1f s (%.1f img/s)", name or dataset.spec, len(dataset), seconds,
                len(dataset) / max(seconds, 1e-9))
    info = {}
    if path is not None:
        if rank == 0:
            with atomic_path(path) as tmp:
                torch.save({"tensors": tensors, "keys": list(dataset.keys), "spec": str(dataset.spec)}, tmp)
            logger.info("features cached in %s", path)
        info["cache_file"] = str(path)
        if world > 1:
            dist.barrier()
    return FeatureSet(tensors, dataset.targets.copy(), list(dataset.groups), list(dataset.keys), name, False,
                      seconds, info)


def linear_input(feats: dict[str, Tensor], n_blocks: int, avgpool: bool) -> Tensor:
    """The DINOv2/v3 linear-head input: CLS of the last `n_blocks` blocks (+ mean patch token), [B, (n + a) * D]."""
    x = feats["cls"][:, -n_blocks:].flatten(1)  # [B, n * D]
    if avgpool:
        x = torch.cat([x, feats["patch_mean"]], dim=1)  # [B, (n + 1) * D]
    return x

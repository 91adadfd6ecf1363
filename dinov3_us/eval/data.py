"""Evaluation splits: shard specs -> labelled map-style datasets with the deterministic eval preprocessing.

`EvalTransform` = to float [C, H, W] -> resize (square, or shorter side + centre crop) -> channels
(gray repeated to RGB for 3-channel backbones) -> normalise (0.449 / 0.226 for one channel, ImageNet
for three). Targets come from each sample's JSON `data.label_key` (the shards' `label` by default),
optionally binned into train-quantile classes (`data.label_bins`, e.g. HC18 head-circumference
terciles). Groups (patients) come from the JSON `patient` / `subject`, for patient-level subsampling.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dinov3_us.data.augment.image_ops import match_channels, normalize, resize, to_float_tensor
from dinov3_us.data.map_dataset import ShardMapDataset
from dinov3_us.data.shards import parse_dir_spec
from dinov3_us.errors import ConfigError, DataError

logger = logging.getLogger("dinov3_us")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)
GROUP_KEYS = ("patient", "subject")


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic preprocessing of one image (and optionally its mask) to the network input."""

    image_size: int
    in_chans: int
    resize_mode: str = "square"
    resize_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.resize_mode not in ("square", "center_crop"):
            raise ConfigError(f"data.resize_mode={self.resize_mode!r} is not one of 'square', 'center_crop'")
        mean, std = self.norm()
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ConfigError(f"data.mean / data.std need {self.in_chans} values (the backbone's channels)")

    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel."""
        default = (GRAY_MEAN, GRAY_STD) if self.in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)
        return tuple(self.mean or default[0]), tuple(self.std or default[1])

    def geometry(self, img: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
        """[C, H, W] -> [C, S, S] (bicubic for images; `mode="nearest"` for masks)."""
        size = self.image_size
        if self.resize_mode == "square":
            return resize(img, size) if mode == "bicubic" else _nearest(img, (size, size))
        short = self.resize_size or int(round(size / 0.875))
        h, w = img.shape[-2:]
        new = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
        img = resize(img, new) if mode == "bicubic" else _nearest(img, new)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        return img[:, top : top + size, left : left + size]

    def __call__(self, image) -> torch.Tensor:
        img = match_channels(to_float_tensor(image), self.in_chans)  # [C, H, W] in [0, 1]
        img = self.geometry(img)  # [C, S, S]
        mean, std = self.norm()
        return normalize(img, mean, std)

    def mask(self, mask) -> torch.Tensor:
        """A uint8 mask [H, W] -> [S, S] uint8, with the image's geometry (nearest neighbour)."""
        m = torch.from_numpy(np.array(mask, dtype=np.float32))[None]  # [1, H, W]
        return self.geometry(m, mode="nearest")[0].to(torch.uint8)

    def describe(self) -> dict:
        """Plain values (for cache keys and results)."""
        mean, std = self.norm()
        return {"image_size": self.image_size, "in_chans": self.in_chans, "resize_mode": self.resize_mode,
                "resize_size": self.resize_size, "mean": list(mean), "std": list(std)}


def _nearest(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img[None], size=size, mode="nearest-exact")[0]


def dataset_name(spec: str) -> str:
    """Short name of a spec: its split list (`DIR:test` -> `test`), else the folder's name."""
    parsed = parse_dir_spec(spec) if isinstance(spec, (str, os.PathLike)) else None
    if parsed is not None:
        folder, splits = parsed
        return ",".join(splits) if splits else os.path.basename(os.path.normpath(folder))
    return os.path.basename(str(spec)).split(".")[0] or str(spec)


def unique_names(specs: list[str]) -> list[str]:
    """`dataset_name` of each spec, with the folder prepended where two would collide."""
    names = [dataset_name(s) for s in specs]
    if len(set(names)) == len(names):
        return names
    out = []
    for spec, name in zip(specs, names):
        parsed = parse_dir_spec(spec)
        folder = os.path.basename(os.path.normpath(parsed[0])) if parsed else str(spec)
        out.append(f"{folder}:{name}")
    if len(set(out)) != len(out):
        raise ConfigError(f"test datasets must differ, got {specs}")
    return out


class EvalDataset(torch.utils.data.Dataset):
    """`ds[i] -> (image [C, S, S], i)` or `(image, mask [S, S], i)` of one split, with `targets`, `groups`, `keys`."""

    def __init__(self, spec: str, transform: EvalTransform, *, with_mask: bool = False, classes=None):
        self.spec, self.transform, self.with_mask = spec, transform, with_mask
        self.base = ShardMapDataset(spec, with_mask=with_mask, classes=classes)
        metas = [entry[3] for entry in self.base.entries]
        self.keys = [entry[1] for entry in self.base.entries]
        self.groups = [str(next((m[k] for k in GROUP_KEYS if m.get(k) is not None), key))
                       for m, key in zip(metas, self.keys)]
        self.metas = metas
        self.classes = list(self.base.classes)
        self.targets = self.base.targets.copy()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, _, meta = self.base[i]
        x = self.transform(image)  # [C, S, S]
        if not self.with_mask:
            return x, i
        if meta.get("mask") is None:
            raise DataError(f"{self.spec} sample {self.keys[i]!r}: no mask (segmentation needs .mask.png members)")
        return x, self.transform.mask(meta["mask"]), i

    def fingerprint(self) -> dict:
        """What identifies this split's content: shard files (name, count, size) and sample keys."""
        shards = [(os.path.basename(s.url), s.n, os.path.getsize(u)) for s, u in zip(self.base.shards, self.base.urls)]
        return {"shards": shards, "keys": self.keys}


def numeric_labels(ds: EvalDataset, key: str) -> np.ndarray:
    """The float value of JSON field `key` of every sample (NaN where absent)."""
    out = np.full(len(ds), np.nan)
    for i, meta in enumerate(ds.metas):
        value = meta.get(key)
        if value is not None:
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise DataError(f"{ds.spec} sample {ds.keys[i]!r}: {key}={value!r} is not a number") from None
    return out


def assign_targets(splits: list[EvalDataset], key: str = "label", bins: int | None = None,
                   classes: list[str] | None = None) -> list[str]:
    """Set `targets` of every split (the first is train) from JSON field `key`; return the class names.

    `key="label"` without bins keeps the shards' labels. With `bins`, the train split's quantiles of the
    numeric field cut every split into `bins` classes `q1..qB` (edges recorded in the class names).
    Otherwise the field's distinct values (sorted) are the classes, unless `classes` is given.
    """
    if bins is not None:
        if bins < 2:
            raise ConfigError(f"data.label_bins must be >= 2, got {bins}")
        train_values = numeric_labels(splits[0], key)
        finite = train_values[np.isfinite(train_values)]
        if len(finite) < bins:
            raise DataError(f"{splits[0].spec}: {len(finite)} samples with a numeric {key!r}, need >= {bins} to bin")
        edges = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])  # [bins - 1]
        bounds = [-math.inf, *edges.tolist(), math.inf]
        names = [f"q{b + 1} [{_fmt(bounds[b])}, {_fmt(bounds[b + 1])})" for b in range(bins)]
        for ds in splits:
            values = numeric_labels(ds, key)
            binned = np.searchsorted(edges, values, side="right")
            ds.targets = np.where(np.isfinite(values), binned, -1).astype(np.int64)
            ds.classes = names
        return names
    if key == "label":
        names = splits[0].classes
        for ds in splits[1:]:
            if ds.classes != names:
                raise DataError(f"{ds.spec}: classes {ds.classes} differ from the train split's {names}")
        return names
    values = [[None if m.get(key) is None else str(m.get(key)) for m in ds.metas] for ds in splits]
    names = list(classes) if classes else sorted({v for vs in values for v in vs if v is not None})
    index = {c: i for i, c in enumerate(names)}
    for ds, vs in zip(splits, values):
        unknown = sorted({v for v in vs if v is not None and v not in index})
        if unknown:
            raise DataError(f"{ds.spec}: {key} values {unknown} are not in the classes {names}")
        ds.targets = np.array([-1 if v is None else index[v] for v in vs], dtype=np.int64)
        ds.classes = names
    return names


def _fmt(x: float) -> str:
    return "-inf" if x == -math.inf else "inf" if x == math.inf else f"{x:.4g}"


def require_labels(ds: EvalDataset, role: str) -> None:
    """A `DataError` unless every sample of `ds` has a target."""
    missing = int((ds.targets < 0).sum())
    if missing:
        raise DataError(f"{ds.spec} ({role}): {missing} of {len(ds)} samples have no label "
                        "(set data.label_key / data.label_bins for unlabelled-class sets such as HC18)")
    if len(ds) == 0:
        raise DataError(f"{ds.spec} ({role}): no samples")

"""Defaults that depend on the backbone: the config's value is kept wherever the user set it.

`EvalConfig`'s defaults suit the released backbones (224 px, 12+ blocks). For a small or exported
backbone, a default the user did not ask for is adapted, with an INFO line: `data.image_size` becomes
the training resolution written in the weights' JSON (`arch.img_size`), and `linear.n_last_blocks`
is clipped to the backbone's depth. A value the user set (YAML, flag or override) is never touched,
so an out-of-range one stays an error. Which keys the user set comes from the command line
(`dinov3_us.eval.cli.explicit_keys`); without that record, a value equal to its default counts as unset.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection

from dinov3_us.eval.config import EvalConfig

logger = logging.getLogger("dinov3_us")


def user_set(cfg: EvalConfig, key: str, explicit: Collection[str] | None) -> bool:
    """Whether `section.key` was set by the user: in `explicit`, or (`explicit` None) differs from its default."""
    if explicit is not None:
        return key in explicit
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name) != getattr(getattr(EvalConfig(), section), name)


def _replace(cfg: EvalConfig, key: str, value) -> EvalConfig:
    """A copy of `cfg` with `section.key` = `value` (the other sections are shared, not copied)."""
    section, name = key.split(".", 1)
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})


def with_trained_image_size(cfg: EvalConfig, trained: int | None, source: str,
                            explicit: Collection[str] | None) -> EvalConfig:
    """`cfg` with `data.image_size` = the backbone's training resolution `trained`, unless the user set it."""
    if trained is None or trained == cfg.data.image_size or user_set(cfg, "data.image_size", explicit):
        return cfg
    logger.info("data.image_size=%d: the backbone's training resolution (%s), not the default %d "
                "(set data.image_size to choose)", trained, source, cfg.data.image_size)
    return _replace(cfg, "data.image_size", trained)


def clip_n_last_blocks(blocks: list[int], depth: int) -> list[int]:
    """`linear.n_last_blocks` values a `depth`-block backbone has: each clipped to `depth`, duplicates merged."""
    return blocks if all(n <= depth for n in blocks) else sorted({min(n, depth) for n in blocks})


def with_n_last_blocks_clipped(cfg: EvalConfig, depth: int, explicit: Collection[str] | None) -> EvalConfig:
    """`cfg` with the default `linear.n_last_blocks` clipped to `depth` blocks, unless the user set it."""
    blocks = cfg.linear.n_last_blocks
    clipped = clip_n_last_blocks(blocks, depth)
    if clipped == blocks or user_set(cfg, "linear.n_last_blocks", explicit):
        return cfg
    logger.info("linear.n_last_blocks=%s: the default %s clipped to the backbone's %d blocks "
                "(set linear.n_last_blocks to choose)", clipped, blocks, depth)
    return _replace(cfg, "linear.n_last_blocks", clipped)

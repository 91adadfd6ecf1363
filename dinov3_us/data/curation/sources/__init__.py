"""Source readers: one module per public dataset layout, each with `read(cfg, skips) -> SourcePlan`.

A reader module also declares `NAME`, `TASKS`, `DEFAULT_TASK`, `PREP_DEFAULTS` (the
preprocessing defaults that suit its images) and `SPLIT_FRACTIONS` (the default `--val-fraction` /
`--test-fraction`; a split missing from it cannot be set). `tools/build_dataset.py --help` is
written from these, so it cannot drift from the readers.
"""

from __future__ import annotations

from types import ModuleType

from dinov3_us.data.curation.sources import folder, fpdb, fplr, hc18, phantom
from dinov3_us.data.curation.sources.common import SourcePlan
from dinov3_us.errors import DataError

SOURCES: dict[str, ModuleType] = {m.NAME: m for m in (fpdb, hc18, fplr, folder, phantom)}


def get_source(name: str) -> ModuleType:
    """The reader module of `name`, or a `DataError` listing the known sources."""
    if name not in SOURCES:
        raise DataError(f"unknown --source {name!r} (known: {', '.join(SOURCES)})")
    return SOURCES[name]


__all__ = ["SOURCES", "SourcePlan", "get_source"]

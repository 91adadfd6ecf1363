"""The units that flow through curation: a planned `Record`, its outcome (`Sample` or `Skip`), and `SkipLog`.

A source reader turns a public download into a list of `Record`s (one per image, split already
assigned); the preprocessing worker turns each into a `Sample` (encoded PNGs + json metadata) or a
`Skip` (with a reason). Every skip, at read time or at decode time, goes through a `SkipLog`, which
counts it by reason, logs it, and under `strict` raises a `DataError` naming the file instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dinov3_us.errors import DataError

logger = logging.getLogger("dinov3_us")

# The address in a default object repr (`<_io.BytesIO object at 0x7f...>`), dropped from skip details.
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")
# Reasons that are by design (not bad input): they never become errors under --strict.
BENIGN_PREFIXES = ("excluded_label", "near_duplicate")


@dataclass
class Record:
    """One planned sample: where its bytes come from, its split, label, group and source metadata."""

    key: str
    split: str
    label: str | None
    group: str | None
    path: str | None = None
    generator: Callable[[], bytes] | None = None
    mask_path: str | None = None
    mask_kind: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Sample:
    """A decoded, preprocessed sample ready for a shard."""

    key: str
    image_png: bytes
    mask_png: bytes | None
    meta: dict
    phash: int


@dataclass
class Skip:
    """A record that could not become a sample, and why."""

    key: str
    reason: str
    where: str
    detail: str = ""


class SkipLog:
    """Counts skipped inputs by reason; logs each one (debug) and raises under `strict` for bad input.

    Entries are what `skipped.tsv` lists, so they must not vary between runs: object addresses
    (` at 0x...` of a default repr) are removed from details.
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.entries: list[list[str]] = []
        self.counts: Counter = Counter()

    def add(self, reason: str, where: str, detail: str = "") -> None:
        """Record one skipped input; under `strict`, raise `DataError` unless the reason is benign."""
        detail = _ADDRESS.sub("", detail)  # a repr's `at 0x7f...` differs per run: outputs stay reproducible
        if self.strict and not reason.startswith(BENIGN_PREFIXES):
            raise DataError(f"{where}: {reason}{': ' + detail if detail else ''} (--strict)")
        self.entries.append([reason, where, detail])
        self.counts[reason] += 1
        logger.debug("skipped %s: %s %s", where, reason, detail)

    def extend(self, entries: list[list[str]]) -> None:
        """Add entries recorded earlier (e.g. restored from a resume journal) without re-checking them."""
        for reason, where, detail in entries:
            self.entries.append([reason, where, detail])
            self.counts[reason] += 1

    def summarize(self) -> None:
        """Log one warning per reason with a few example files."""
        for reason, n in sorted(self.counts.items()):
            examples = [w for r, w, _ in self.entries if r == reason][:3]
            level = logging.INFO if reason.startswith(BENIGN_PREFIXES) else logging.WARNING
            logger.log(level, "skipped %d x %s (e.g. %s)", n, reason, ", ".join(examples))


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(*parts: str) -> str:
    """A webdataset key from parts: no dots or slashes (webdataset splits keys at the first dot)."""
    return "_".join(_UNSAFE.sub("_", str(p)).strip("_") for p in parts if str(p))


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically ('p2' < 'p10')."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(text)) if t)


def dedupe_keys(records: list[Record]) -> None:
    """Make keys unique in place: colliding keys get a suffix from their file path (deterministic)."""
    seen = Counter(r.key for r in records)
    for r in records:
        if seen[r.key] > 1:
            tag = hashlib.sha1(str(r.path or r.meta.get("file", "")).encode()).hexdigest()[:8]
            r.key = f"{r.key}_{tag}"
    if len({r.key for r in records}) != len(records):
        raise DataError("two inputs map to the same sample key even after disambiguation; rename one of them")

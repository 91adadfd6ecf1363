"""What every source reader shares: the `SourcePlan` it returns and small argument / file helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dinov3_us.data.curation.records import Record, natural_key
from dinov3_us.data.curation.splits import assign_by_group
from dinov3_us.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Default preprocessing of real scans (sources may override): see PrepOptions.
REAL_SCAN_DEFAULTS = {"grayscale": True, "resize": 256, "crop_sector": True, "mask_text": True, "dedup": True}
# Default split fractions of the CSV-driven sources (FPDB, FPLR): their test split is the official one.
CSV_SPLIT_FRACTIONS = {"val": 0.2}


@dataclass
class SourcePlan:
    """What a reader found: the records (split assigned), the label order, and manifest notes."""

    records: list[Record]
    task: str | None
    labels: list[str]
    split_policy: str
    extra: dict = field(default_factory=dict)


def require_root(cfg) -> Path:
    """`cfg.root` as an existing directory, or a `DataError` saying what was expected."""
    if cfg.root is None:
        raise DataError(f"--root is required for --source {cfg.source} (the folder of the public download)")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"{root}: --root is not a directory (expected the {cfg.source} download)")
    return root


def require_task(cfg, tasks: tuple[str, ...], default: str | None) -> str | None:
    """`cfg.task` if the source supports it (or the source's default), else a `DataError`."""
    task = cfg.task or default
    if cfg.task is not None and cfg.task not in tasks:
        supported = ", ".join(tasks) if tasks else "none"
        raise DataError(f"--task {cfg.task!r} is not supported by --source {cfg.source} (supported: {supported})")
    return task


def reject(cfg, *names: str) -> None:
    """Raise when an option that this source ignores was given (silently ignoring it would mislead)."""
    for name in names:
        if getattr(cfg, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise DataError(f"{flag} does not apply to --source {cfg.source}")


def list_images(directory: Path, recursive: bool = False) -> list[Path]:
    """Image files under `directory` (hidden files skipped), in natural order of their relative path."""
    pattern = directory.rglob("*") if recursive else directory.iterdir()
    found = [
        p
        for p in pattern
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not any(part.startswith(".") for part in p.parts[-2:])
    ]
    return sorted(found, key=lambda p: natural_key(p.relative_to(directory).as_posix()))


def rel(path: Path, root: Path) -> str:
    """`path` relative to `root` (POSIX), or as given when it is outside."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def split_csv_records(records: list[Record], files: dict[str, Path], named: set[str], skips, cfg, csv_path: Path,
                      base: Path, labels) -> tuple[list[Record], float]:
    """The shared tail of the CSV-driven sources (FPDB, FPLR).

    Counts the images no CSV row names (`unlisted_file`), moves `val` (default 20%) of the train patients to
    `val` stratified by majority label over all rows (so a partial download gets the same val patients), and
    keeps the rows whose image is present (the others are counted as `missing_file`). Returns (present, val).
    """
    for stem, path in files.items():
        if stem not in named:
            skips.add("unlisted_file", str(path), f"no row of {csv_path.name} names it")
    val = cfg.fraction("val", CSV_SPLIT_FRACTIONS["val"])
    assign_by_group(records, {"val": val}, cfg.seed, label_order=labels)
    present = []
    for r in records:
        if r.path is None:
            skips.add("missing_file", str(base / r.meta["file"]), f"named in {csv_path.name}")
        else:
            present.append(r)
    return present, val

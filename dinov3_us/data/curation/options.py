"""`BuildConfig`: every option of one curation run, and how source defaults fill the unset ones."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from dinov3_us.data.curation.preprocess import PrepOptions
from dinov3_us.errors import DataError

FORMAT_VERSION = 1

# Options that change what is written; the rest (workers, progress, strict, overwrite) do not.
_OUTPUT_FIELDS = (
    "source", "root", "csv", "task", "name", "seed", "val_fraction", "test_fraction", "num_samples",
    "image_size", "folder_labels", "group_regex", "shard_size", "limit", "dedup_threshold",
)


@dataclass
class BuildConfig:
    """Options of `build_dataset` (the CLI's flags). `None` means 'the source's default'."""

    source: str
    out: Path
    root: Path | None = None
    task: str | None = None
    csv: Path | None = None
    name: str | None = None
    seed: int = 42
    val_fraction: float | None = None
    test_fraction: float | None = None
    num_samples: int | None = None
    image_size: int | None = None
    folder_labels: str = "auto"
    group_regex: str | None = None
    grayscale: bool | None = None
    resize: int | None = None
    crop_sector: bool | None = None
    mask_text: bool | None = None
    png_compression: int = 3
    dedup: bool | None = None
    dedup_threshold: int = 4
    dedup_against: list[Path] = field(default_factory=list)
    shard_size: int = 1000
    limit: int | None = None
    strict: bool = False
    workers: int = 1
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        self.root = None if self.root is None else Path(self.root)
        self.csv = None if self.csv is None else Path(self.csv)
        self.dedup_against = [Path(p) for p in self.dedup_against]
        if self.shard_size < 1:
            raise DataError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.limit is not None and self.limit < 1:
            raise DataError(f"--limit must be >= 1, got {self.limit}")
        if self.workers < 1:
            raise DataError(f"--workers must be >= 1, got {self.workers}")
        if not 0 <= self.png_compression <= 9:
            raise DataError(f"--png-compression must be in 0..9, got {self.png_compression}")

    def fraction(self, which: str, default: float) -> float:
        """`val_fraction` / `test_fraction`, or the source's default; checked to lie in [0, 1)."""
        value = getattr(self, f"{which}_fraction")
        value = default if value is None else value
        if not 0 <= value < 1:
            raise DataError(f"--{which}-fraction must be in [0, 1), got {value}")
        return value

    def resolve(self, defaults: dict) -> tuple[PrepOptions, bool]:
        """Preprocessing options and the dedup switch, unset ones taken from the source's defaults."""

        def pick(name):
            value = getattr(self, name)
            return defaults.get(name, getattr(PrepOptions, name, True)) if value is None else value

        prep = PrepOptions(
            grayscale=pick("grayscale"),
            resize=pick("resize"),
            crop_sector=pick("crop_sector"),
            mask_text=pick("mask_text"),
            png_compression=self.png_compression,
        )
        return prep, bool(pick("dedup"))

    def output_fields(self) -> dict:
        """The options that determine the output, as JSON-able values (for the manifest and fingerprint)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _OUTPUT_FIELDS}
        values["root"] = None if self.root is None else str(self.root.resolve())
        values["csv"] = None if self.csv is None else str(self.csv.resolve())
        values["dedup_against"] = [str(p.resolve()) for p in self.dedup_against]
        values["format_version"] = FORMAT_VERSION
        return values

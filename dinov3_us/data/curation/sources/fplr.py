"""Fetal planes from low-resource settings in five African countries (Sendra-Balcells et al. 2023, Zenodo 7540448).

The download (`Zenodo_dataset/`) holds `African_planes_database.csv` (comma-separated; columns
`Filename` (no extension), `Plane`, `Patient_num`, `Center`, `Train`) and one folder per country
(`Algeria/ Egypt/ Ghana/ Malawi/ Uganda/`) with `<Filename>.png`, e.g.
`Algeria/patient001_DZA_plane0.png`. Planes: Fetal abdomen / brain / femur / thorax.
`--root` may be the folder holding the CSV or its parent.

Patient numbers restart in every country, so the patient id is `<Center>-<Patient_num>`. Splits
mirror the FETAL_PLANES_DB protocol: `Train` 1 -> train, 0 -> test (the same convention as FPDB's
column); `val_fraction` (default 20%) of the train patients -> val, stratified by each patient's
majority plane, seed `--seed`. Images are looked up as `<Center>/<Filename>.png` (or anywhere
under the country folders / an `Images/` folder with that name); rows without an image are
`missing_file`, images no row names are `unlisted_file`.
"""

from __future__ import annotations

from pathlib import Path

from dinov3_us.data.curation.csvfile import normalize_id, parse_binary, read_table
from dinov3_us.data.curation.records import Record, safe_key
from dinov3_us.data.curation.sources.common import (
    CSV_SPLIT_FRACTIONS,
    REAL_SCAN_DEFAULTS,
    SourcePlan,
    list_images,
    reject,
    rel,
    require_root,
    require_task,
    split_csv_records,
)
from dinov3_us.errors import DataError

NAME = "fplr"
TASKS = ("planes",)
DEFAULT_TASK = "planes"
PREP_DEFAULTS = REAL_SCAN_DEFAULTS
SPLIT_FRACTIONS = CSV_SPLIT_FRACTIONS
CSV_NAME = "African_planes_database.csv"
PLANES = ("Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax")
COLUMNS = {
    "Filename": ("Image_name", "file name"),
    "Plane": (),
    "Patient_num": ("patient",),
    "Center": ("country", "centre"),
    "Train": (),
}


def _find_csv(cfg, root: Path) -> Path:
    if cfg.csv is not None:
        return Path(cfg.csv)
    for candidate in (root / CSV_NAME, root / "Zenodo_dataset" / CSV_NAME):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root}: {CSV_NAME} not found here or in Zenodo_dataset/ (expected the Zenodo 7540448 layout)")


def read(cfg, skips) -> SourcePlan:
    """Plan the African fetal-planes records from `cfg.root`."""
    root = require_root(cfg)
    task = require_task(cfg, TASKS, DEFAULT_TASK)
    reject(cfg, "test_fraction", "num_samples", "image_size")
    name = cfg.name or NAME
    csv_path = _find_csv(cfg, root)
    base = csv_path.parent if cfg.csv is None else root
    rows = read_table(csv_path, COLUMNS)
    folders = sorted({row["Center"] for row in rows if row["Center"]} | {"Images"})
    files: dict[str, Path] = {}
    for folder in folders:
        if (base / folder).is_dir():
            for path in list_images(base / folder, recursive=True):
                files.setdefault(path.stem.lower(), path)

    named: set[str] = set()
    records: list[Record] = []
    for line, row in enumerate(rows, start=2):
        stem = Path(row["Filename"]).stem if Path(row["Filename"]).suffix.lower() == ".png" else row["Filename"]
        where = f"{csv_path.name}:{line} ({stem})"
        if stem.lower() in named:
            skips.add("duplicate_row", where)
            continue
        named.add(stem.lower())
        label, train = row["Plane"], parse_binary(row["Train"])
        if label not in PLANES:
            skips.add("unknown_label", where, f"{label!r} is not one of {list(PLANES)}")
            continue
        if train is None or not row["Patient_num"] or not row["Center"]:
            skips.add("bad_row", where, f"Train={row['Train']!r} Patient_num={row['Patient_num']!r}")
            continue
        patient = f"{row['Center']}-{normalize_id(row['Patient_num'])}"
        path = files.get(stem.lower())
        expected = base / row["Center"] / f"{stem}.png"
        records.append(
            Record(
                key=safe_key(name, stem),
                split="train" if train else "test",
                label=label,
                group=patient,
                path=None if path is None else str(path),
                meta={
                    "source": name,
                    "task": task,
                    "patient": patient,
                    "country": row["Center"],
                    "file": rel(path or expected, base),
                    "plane": label,
                    "official_train": bool(train),
                },
            )
        )
    present, val = split_csv_records(records, files, named, skips, cfg, csv_path, base, PLANES)
    policy = (
        f"official Train column (1 train, 0 test); {val:.0%} of train patients (<Center>-<Patient_num>) -> val, "
        f"stratified by patient majority plane, seed {cfg.seed}"
    )
    return SourcePlan(present, task, list(PLANES), policy, {"csv": str(csv_path)})

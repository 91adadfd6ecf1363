"""FETAL_PLANES_DB (Burgos-Artizzu et al. 2020, Zenodo 3904280): `FETAL_PLANES_DB_data.csv` + `Images/*.png`.

Tasks: `planes` (the 6 coarse planes of `Plane`) and `brain-planes` (Trans-thalamic /
Trans-ventricular / Trans-cerebellum from `Brain_plane`; `Other` and `Not A Brain` rows are dropped
and counted as `excluded_label:...`). Splits follow the study's protocol: the official `Train`
column gives train (1) / test (0); then `val_fraction` (default 20%) of the train *patients* become
`val`, stratified by each patient's majority label, seed `--seed` (42). The split is drawn from the
CSV rows (all of them that carry a task label), not from the images present, so a partial download
gets the same val patients as the full one. Rows whose image is absent are counted as
`missing_file`; images no row names, as `unlisted_file`.
"""

from __future__ import annotations

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

NAME = "fpdb"
TASKS = ("planes", "brain-planes")
DEFAULT_TASK = "planes"
PREP_DEFAULTS = REAL_SCAN_DEFAULTS
SPLIT_FRACTIONS = CSV_SPLIT_FRACTIONS
CSV_NAME = "FETAL_PLANES_DB_data.csv"
PLANES = ("Fetal abdomen", "Fetal brain", "Fetal femur", "Fetal thorax", "Maternal cervix", "Other")
BRAIN_PLANES = ("Trans-thalamic", "Trans-ventricular", "Trans-cerebellum")
BRAIN_EXCLUDED = ("Other", "Not A Brain")
COLUMNS = {
    "Image_name": ("image name",),
    "Patient_num": ("patient",),
    "Plane": (),
    "Brain_plane": ("brain plane",),
    "Train": (),
}


def read(cfg, skips) -> SourcePlan:
    """Plan the FETAL_PLANES_DB records of `cfg.task` from `cfg.root` (and `cfg.csv`)."""
    root = require_root(cfg)
    task = require_task(cfg, TASKS, DEFAULT_TASK)
    reject(cfg, "test_fraction", "num_samples", "image_size")
    name = cfg.name or NAME
    brain = task == "brain-planes"
    labels = BRAIN_PLANES if brain else PLANES
    csv_path = cfg.csv or root / CSV_NAME
    images_dir = root / "Images" if (root / "Images").is_dir() else root
    rows = read_table(csv_path, COLUMNS)
    files = {p.stem: p for p in list_images(images_dir) if p.suffix.lower() == ".png"}

    named: set[str] = set()
    records: list[Record] = []
    for line, row in enumerate(rows, start=2):
        stem = row["Image_name"][:-4] if row["Image_name"].lower().endswith(".png") else row["Image_name"]
        where = f"{csv_path.name}:{line} ({stem})"
        if stem in named:
            skips.add("duplicate_row", where)
            continue
        named.add(stem)
        label = row["Brain_plane"] if brain else row["Plane"]
        if brain and label in BRAIN_EXCLUDED:
            skips.add(f"excluded_label:{label}", where)
            continue
        if label not in labels:
            skips.add("unknown_label", where, f"{label!r} is not one of {list(labels)}")
            continue
        train = parse_binary(row["Train"])
        if train is None or not row["Patient_num"]:
            skips.add("bad_row", where, f"Train={row['Train']!r} Patient_num={row['Patient_num']!r}")
            continue
        patient = normalize_id(row["Patient_num"])
        path = files.get(stem)
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
                    "file": rel(path, root) if path else f"{rel(images_dir, root)}/{stem}.png",
                    "plane": row["Plane"],
                    "brain_plane": row["Brain_plane"],
                    "operator": row.get("Operator"),
                    "us_machine": row.get("US_Machine"),
                    "official_train": bool(train),
                },
            )
        )
    present, val = split_csv_records(records, files, named, skips, cfg, csv_path, root, labels)
    policy = (
        f"official Train column -> train/test; {val:.0%} of train patients -> val, stratified by "
        f"patient majority label, seed {cfg.seed}; split drawn over all CSV rows of the task"
    )
    return SourcePlan(present, task, list(labels), policy, {"csv": str(csv_path)})

"""HC18 (van den Heuvel et al. 2018, Zenodo 1327317): head images, head masks, pixel size and head circumference.

Layout: `training_set/NNN[_k]HC.png` with a mask `NNN[_k]HC_Mask.png` (filled) or
`NNN[_k]HC_Annotation.png` (the Zenodo outline, filled here), the labels in
`training_set_pixel_size_and_HC.csv` (`filename,pixel size(mm),head circumference (mm)`), and
`test_set/NNN_HC.png` (no labels; pixel sizes in `test_set_pixel_size.csv` when present).

The subject is the numeric prefix (`017_HC`, `017_2HC` are one fetus). Labelled images are split
by subject: `val_fraction` / `test_fraction` (default 15% / 15%) of the subjects, seed `--seed`,
the rest `train`. Images without a CSV row and all `test_set/` images form the `unlabelled` split
(test-set subjects are `test_set/NNN`: their numbers repeat the training ones but they are other
fetuses). HC18 has no class label: with the default task `head-circumference`, `label` is null and
the supervision is the mask and the json's `head_circumference_mm` / `pixel_spacing_mm`. The task
`hc-terciles` adds a 3-class label for linear probing and kNN: `hc_low` / `hc_mid` / `hc_high`, the head
circumference below / between / above the terciles of the *train* split (so no val/test information
leaks into the thresholds, which are written to the manifest's split policy).
"""

from __future__ import annotations

import re

from dinov3_us.data.curation.csvfile import parse_float, read_table
from dinov3_us.data.curation.records import Record, safe_key
from dinov3_us.data.curation.sources.common import (
    REAL_SCAN_DEFAULTS,
    SourcePlan,
    list_images,
    reject,
    rel,
    require_root,
    require_task,
)
from dinov3_us.data.curation.splits import assign_by_group
from dinov3_us.errors import DataError

NAME = "hc18"
TASKS = ("head-circumference", "hc-terciles")
TERCILE_LABELS = ["hc_low", "hc_mid", "hc_high"]
DEFAULT_TASK = "head-circumference"
PREP_DEFAULTS = REAL_SCAN_DEFAULTS
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}
LABEL_CSV = "training_set_pixel_size_and_HC.csv"
TEST_CSV = "test_set_pixel_size.csv"
IMAGE_RE = re.compile(r"^(\d+)_(\d*)HC\.png$", re.IGNORECASE)
MASKS = (("_Mask.png", "filled"), ("_Annotation.png", "outline"))
COLUMNS = {
    "filename": ("file name", "image"),
    "pixel size(mm)": ("pixel size (mm)", "pixel_size_mm", "pixel size"),
    "head circumference (mm)": ("head circumference(mm)", "hc_mm", "head circumference"),
}


def _images(directory, skips):
    """{file name: subject} of HC images in `directory`; other non-mask files are counted as unrecognised."""
    found = {}
    for path in list_images(directory):
        match = IMAGE_RE.match(path.name)
        if match:
            found[path.name] = str(int(match.group(1)))
        elif not path.name.endswith(tuple(m for m, _ in MASKS)):
            skips.add("unrecognised_file", str(path), "expected NNN[_k]HC.png or a mask")
    return found


def read(cfg, skips) -> SourcePlan:
    """Plan HC18's labelled (train/val/test) and unlabelled records from `cfg.root`."""
    root = require_root(cfg)
    task = require_task(cfg, TASKS, DEFAULT_TASK)
    reject(cfg, "num_samples", "image_size")
    name = cfg.name or NAME
    train_dir, test_dir = root / "training_set", root / "test_set"
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise DataError(f"{root}: expected training_set/ and/or test_set/ (the HC18 Zenodo layout)")
    labelled, unlabelled = [], []
    if train_dir.is_dir():
        csv_path = cfg.csv or root / LABEL_CSV
        table = {row["filename"]: (line, row) for line, row in enumerate(read_table(csv_path, COLUMNS), start=2)}
        images = _images(train_dir, skips)
        for fname, (line, row) in table.items():
            where = f"{csv_path.name}:{line} ({fname})"
            if fname not in images:
                skips.add("missing_file", str(train_dir / fname), f"named in {csv_path.name}")
                continue
            spacing, hc = parse_float(row["pixel size(mm)"]), parse_float(row["head circumference (mm)"])
            if spacing is None or hc is None:
                skips.add("bad_row", where, "pixel size / head circumference is not a number")
                continue
            stem = fname[:-4]
            mask = next(((train_dir / (stem + s), k) for s, k in MASKS if (train_dir / (stem + s)).is_file()), None)
            if mask is None:
                skips.add("missing_mask", str(train_dir / fname), "no _Mask.png or _Annotation.png beside it")
                continue
            meta = {"pixel_spacing_mm": spacing, "head_circumference_mm": hc, "mask_kind": mask[1]}
            labelled.append(_record(name, task, "train", images[fname], train_dir / fname, root, meta, mask))
        for fname, subject in images.items():
            if fname not in table:
                unlabelled.append(_record(name, task, "unlabelled", subject, train_dir / fname, root, {}, None))
    val, test = cfg.fraction("val", SPLIT_FRACTIONS["val"]), cfg.fraction("test", SPLIT_FRACTIONS["test"])
    assign_by_group(labelled, {"val": val, "test": test}, cfg.seed)
    taken = {r.group for r in labelled}
    for r in unlabelled:
        if r.group in taken:
            skips.add("unlabelled_image_of_labelled_subject", r.path, "would put its subject in two splits")
    unlabelled = [r for r in unlabelled if r.group not in taken]
    if test_dir.is_dir():
        spacing = {}
        if (root / TEST_CSV).is_file():
            rows = read_table(root / TEST_CSV, {k: v for k, v in COLUMNS.items() if k != "head circumference (mm)"})
            spacing = {row["filename"]: parse_float(row["pixel size(mm)"]) for row in rows}
        for fname, subject in _images(test_dir, skips).items():
            meta = {"pixel_spacing_mm": spacing.get(fname)}
            subject = f"test_set/{subject}"
            unlabelled.append(_record(name, task, "unlabelled", subject, test_dir / fname, root, meta, None))
    policy = (
        f"labelled images split by subject (numeric prefix): {val:.0%} val, {test:.0%} test, rest train, "
        f"seed {cfg.seed}; images without a CSV row and test_set/ -> unlabelled"
    )
    if task == "hc-terciles":
        low, high = _label_terciles(labelled)
        policy += f"; labels: head circumference < {low:.1f} mm, < {high:.1f} mm, above (train-split terciles)"
        return SourcePlan(labelled + unlabelled, task, list(TERCILE_LABELS), policy)
    return SourcePlan(labelled + unlabelled, task, [], policy)


def _label_terciles(records: list[Record]) -> tuple[float, float]:
    """Label every labelled record by the head-circumference terciles of the train split; returns them."""
    train = sorted(r.meta["head_circumference_mm"] for r in records if r.split == "train")
    if len(train) < 3:
        raise DataError(f"hc-terciles needs at least 3 labelled train images, got {len(train)}")
    low, high = train[len(train) // 3], train[2 * len(train) // 3]
    for r in records:
        hc = r.meta["head_circumference_mm"]
        r.label = TERCILE_LABELS[0] if hc < low else TERCILE_LABELS[1] if hc < high else TERCILE_LABELS[2]
    return low, high


def _record(name, task, split, subject, path, root, meta, mask) -> Record:
    folder = "training" if path.parent.name == "training_set" else "testset"
    return Record(
        key=safe_key(name, folder, path.stem),
        split=split,
        label=None,
        group=subject,
        path=str(path),
        mask_path=None if mask is None else str(mask[0]),
        mask_kind=None if mask is None else mask[1],
        meta={"source": name, "task": task, "subject": subject, "file": rel(path, root), **meta},
    )

"""FETAL_PLANES_DB on the real CSV + the 57 real images in ../shared/data/fpdb."""

import csv
import shutil
from collections import Counter

import numpy as np
import pytest
from curation_testutil import build, check_consistent
from PIL import Image

from dinov3_us.data.curation import BuildConfig
from dinov3_us.data.curation.records import SkipLog
from dinov3_us.data.curation.sources import fpdb
from dinov3_us.errors import DataError


@pytest.fixture(scope="module")
def fpdb_root(data_dir):
    return data_dir / "fpdb"


def _rows(root):
    with open(root / fpdb.CSV_NAME, newline="") as f:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f, delimiter=";")]


@pytest.mark.slow
def test_brain_planes_on_real_images(fpdb_root, tmp_path):
    manifest = build(tmp_path / "out", source="fpdb", task="brain-planes", root=fpdb_root)
    rows = {r["Image_name"]: r for r in _rows(fpdb_root)}
    present = {p.stem for p in (fpdb_root / "Images").glob("*.png")}
    assert len(present) == 57
    skipped = manifest["skipped"]
    assert skipped["excluded_label:Other"] == 143 and skipped["excluded_label:Not A Brain"] == 12400 - 3092
    assert skipped["missing_file"] == 3092 - 143 - 57
    # one real near-duplicate pair (two patients, identical picture) is dropped and reported
    assert skipped["near_duplicate"] == 1 and manifest["num_samples"] == 56
    dup = manifest["duplicates"][0]
    assert {dup["key"], dup["duplicate_of"]} == {"fpdb_Patient00786_Plane3_2_of_3", "fpdb_Patient00799_Plane3_1_of_3"}
    assert manifest["labels"] == ["Trans-thalamic", "Trans-ventricular", "Trans-cerebellum"]
    samples = check_consistent(tmp_path / "out")
    for split, items in samples.items():
        for item in items:
            meta = item["meta"]
            row = rows[meta["key"].removeprefix("fpdb_")]
            assert meta["label"] == row["Brain_plane"] == "Trans-ventricular"
            assert meta["patient"] == str(int(row["Patient_num"])) and meta["group"] == f"fpdb/{meta['patient']}"
            assert (split == "test") == (row["Train"] == "0")
            assert meta["original_size"] == [959, 661] and min(meta["size"]) == 96 and len(meta["sha1"]) == 40
    assert {s: sum(t.values()) for s, t in manifest["counts"].items()} == {"test": 2, "val": 11, "train": 43}


def test_val_split_follows_the_protocol_on_the_full_csv(fpdb_root, tmp_path):
    """With every CSV image present (empty stand-ins: only names are read), the study's counts come out."""
    images = tmp_path / "Images"
    images.mkdir()
    for row in _rows(fpdb_root):
        if row["Plane"] == "Fetal brain":
            (images / f"{row['Image_name']}.png").touch()
    cfg = BuildConfig(source="fpdb", out=tmp_path / "unused", root=tmp_path, csv=fpdb_root / fpdb.CSV_NAME,
                      task="brain-planes")
    plan = fpdb.read(cfg, SkipLog())
    counts = Counter((r.split, r.label) for r in plan.records)
    for label, train, test in (("Trans-thalamic", 873, 765), ("Trans-ventricular", 295, 302),
                               ("Trans-cerebellum", 375, 339)):
        assert counts["train", label] + counts["val", label] == train and counts["test", label] == test
    patients = {s: {r.group for r in plan.records if r.split == s} for s in ("train", "val", "test")}
    assert not (patients["train"] & patients["val"]) and not (patients["test"] & (patients["train"] | patients["val"]))
    n_train = len(patients["train"]) + len(patients["val"])
    assert len(patients["val"]) == round(0.2 * n_train)
    # stratified: each label's share of val images stays near its share of train images
    for label in fpdb.BRAIN_PLANES:
        share_val = counts["val", label] / sum(counts["val", lab] for lab in fpdb.BRAIN_PLANES)
        share_train = counts["train", label] / sum(counts["train", lab] for lab in fpdb.BRAIN_PLANES)
        assert abs(share_val - share_train) < 0.08
    again = fpdb.read(cfg, SkipLog())
    assert [(r.key, r.split) for r in again.records] == [(r.key, r.split) for r in plan.records]


@pytest.fixture
def damaged_copy(fpdb_root, tmp_path):
    """A temp copy of the fixture (symlinks) with one truncated, one empty and one unlisted image."""
    root = tmp_path / "fpdb"
    (root / "Images").mkdir(parents=True)
    (root / fpdb.CSV_NAME).symlink_to(fpdb_root / fpdb.CSV_NAME)
    names = sorted(p.name for p in (fpdb_root / "Images").glob("*.png"))
    for name in names[2:12]:
        (root / "Images" / name).symlink_to(fpdb_root / "Images" / name)
    (root / "Images" / names[0]).write_bytes((fpdb_root / "Images" / names[0]).read_bytes()[:5000])
    (root / "Images" / names[1]).write_bytes(b"")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "Images" / "Patient99999_Plane3_1_of_1.png")
    return root, names


def test_bad_files_are_counted_not_fatal_and_fatal_under_strict(damaged_copy, tmp_path):
    root, names = damaged_copy
    manifest = build(tmp_path / "out", source="fpdb", task="planes", root=root)
    skipped = manifest["skipped"]
    assert skipped["unreadable_image"] == 1 and skipped["empty_file"] == 1 and skipped["unlisted_file"] == 1
    assert skipped["missing_file"] == 12400 - 12
    assert manifest["num_samples"] == 10 and set(manifest["labels"]) >= {"Fetal brain", "Maternal cervix"}
    assert sum(t.get("Fetal brain", 0) for t in manifest["counts"].values()) == 10
    log = (tmp_path / "out" / "skipped.tsv").read_text()
    assert names[0] in log and "unreadable_image" in log and "Patient99999" in log
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(DataError, match="Patient99999_Plane3_1_of_1.png: unlisted_file"):
        build(tmp_path / "strict", source="fpdb", task="planes", root=root, strict=True)


def test_bad_csv_and_task(fpdb_root, tmp_path):
    with pytest.raises(DataError, match="--task 'tt-tv-tc'.*planes, brain-planes"):
        build(tmp_path / "o", source="fpdb", task="tt-tv-tc", root=fpdb_root)
    broken = tmp_path / "broken.csv"
    broken.write_text("Image_name;Patient_num;Plane;Operator;Train\nPatient00001_Plane1_1_of_15;1;Other;Op;1\n")
    with pytest.raises(DataError, match=r"broken\.csv: missing column 'Brain_plane'"):
        build(tmp_path / "o", source="fpdb", task="brain-planes", root=fpdb_root, csv=broken)
    with pytest.raises(DataError, match="label CSV not found"):
        build(tmp_path / "o", source="fpdb", root=tmp_path)

"""HC18 on the real files in ../shared/data/hc18: subjects kept together, masks, HC, unlabelled split."""

import shutil

import numpy as np
import pytest
from curation_testutil import build, check_consistent, decode
from PIL import Image, ImageFilter

from dinov3_us.data.curation import BuildConfig
from dinov3_us.data.curation.records import SkipLog
from dinov3_us.data.curation.sources import hc18
from dinov3_us.errors import DataError


@pytest.fixture(scope="module")
def hc18_root(data_dir):
    return data_dir / "hc18"


def test_plan_of_the_whole_real_set(hc18_root):
    skips = SkipLog()
    plan = hc18.read(BuildConfig(source="hc18", out="unused", root=hc18_root), skips)
    assert not skips.counts
    by_split = {}
    for r in plan.records:
        by_split.setdefault(r.split, []).append(r)
    labelled = [r for s in ("train", "val", "test") for r in by_split[s]]
    assert len(labelled) == 807 and len(by_split["unlabelled"]) == 335
    assert all(r.mask_path and r.meta["head_circumference_mm"] > 0 and r.meta["pixel_spacing_mm"] > 0 for r in labelled)
    assert all(r.mask_path is None and r.meta["subject"].startswith("test_set/") for r in by_split["unlabelled"])
    subjects = {s: {r.group for r in rs} for s, rs in by_split.items()}
    for a in subjects:
        for b in subjects:
            assert a == b or not (subjects[a] & subjects[b]), (a, b)
    n_subjects = sum(len(subjects[s]) for s in ("train", "val", "test"))
    assert n_subjects == len({r.key.split("_")[2] for r in labelled})
    assert len(subjects["val"]) == len(subjects["test"]) == round(0.15 * n_subjects)
    multi = [r for r in labelled if r.group == "17"]
    assert len(multi) > 1 and len({r.split for r in multi}) == 1


def test_limited_build_masks_and_measurements(hc18_root, tmp_path):
    manifest = build(tmp_path / "out", source="hc18", root=hc18_root, limit=6)
    assert {s: sum(t.values()) for s, t in manifest["counts"].items()} == {s: 6 for s in
                                                                            ("test", "val", "train", "unlabelled")}
    assert manifest["counts"]["unlabelled"] == {"null": 6} and manifest["members"]["mask"] == "mask.png"
    samples = check_consistent(tmp_path / "out")
    for split in ("train", "val", "test"):
        for item in samples[split]:
            meta, image, mask = item["meta"], decode(item["png"]), decode(item["mask.png"])
            assert meta["head_circumference_mm"] > 0 and meta["group"] == f"hc18/{meta['subject']}"
            assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 255} and mask.mean() > 10
            assert meta["original_size"] == [400, 270] and meta["stored_pixel_spacing_mm"] > meta["pixel_spacing_mm"]
    assert all("mask.png" not in item and item["meta"]["label"] is None for item in samples["unlabelled"])


def test_outline_annotations_are_filled(hc18_root, tmp_path):
    root = tmp_path / "hc18"
    (root / "training_set").mkdir(parents=True)
    lines = (hc18_root / hc18.LABEL_CSV).read_text().splitlines()[:4]
    names = [line.split(",")[0][:-4] for line in lines[1:]]
    (root / hc18.LABEL_CSV).write_text("\n".join(lines) + "\n")
    for name in names:
        shutil.copy(hc18_root / "training_set" / f"{name}.png", root / "training_set")
        filled = Image.open(hc18_root / "training_set" / f"{name}_Mask.png").convert("L")
        edge = filled.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v else 0)
        edge.save(root / "training_set" / f"{name}_Annotation.png")
    manifest = build(tmp_path / "out", source="hc18", root=root, resize=0, crop_sector=False, dedup=False)
    assert manifest["num_samples"] == 3
    for items in check_consistent(tmp_path / "out").values():
        for item in items:
            truth = np.asarray(Image.open(hc18_root / "training_set" / f"{item['meta']['file'][13:-4]}_Mask.png")) > 0
            got = decode(item["mask.png"]) > 0
            assert item["meta"]["mask_kind"] == "outline"
            assert (truth & got).sum() / (truth | got).sum() > 0.97


def test_missing_column_and_missing_mask(hc18_root, tmp_path):
    root = tmp_path / "hc18"
    (root / "training_set").mkdir(parents=True)
    name = (hc18_root / hc18.LABEL_CSV).read_text().splitlines()[1].split(",")[0]
    (root / hc18.LABEL_CSV).write_text(f"filename,pixel size(mm)\n{name},0.1\n")
    with pytest.raises(DataError, match=r"missing column 'head circumference \(mm\)'"):
        build(tmp_path / "o", source="hc18", root=root)
    (root / hc18.LABEL_CSV).write_text(f"filename,pixel size(mm),head circumference (mm)\n{name},0.1,150\n")
    shutil.copy(hc18_root / "training_set" / name, root / "training_set")
    skips = SkipLog()
    assert hc18.read(BuildConfig(source="hc18", out="unused", root=root), skips).records == []
    assert skips.counts == {"missing_mask": 1}
    with pytest.raises(DataError, match="expected training_set/"):
        build(tmp_path / "o", source="hc18", root=tmp_path / "hc18" / "training_set")


def test_hc_terciles_task_labels_from_train_thresholds(hc18_root):
    skips = SkipLog()
    plan = hc18.read(BuildConfig(source="hc18", out="unused", root=hc18_root, task="hc-terciles"), skips)
    assert plan.labels == ["hc_low", "hc_mid", "hc_high"] and "train-split terciles" in plan.split_policy
    train = [r for r in plan.records if r.split == "train"]
    counts = {lab: sum(r.label == lab for r in train) for lab in plan.labels}
    assert max(counts.values()) - min(counts.values()) <= 2  # terciles of the train split itself
    by_label = {lab: [r.meta["head_circumference_mm"] for r in plan.records if r.label == lab] for lab in plan.labels}
    assert max(by_label["hc_low"]) < min(by_label["hc_mid"]) and max(by_label["hc_mid"]) < min(by_label["hc_high"])
    assert all(r.label is None for r in plan.records if r.split == "unlabelled")

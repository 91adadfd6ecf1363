"""The generic folder source, preprocessing of overlays / sector, and the split helpers."""

import numpy as np
import pytest
from curation_testutil import build, check_consistent
from PIL import Image

from dinov3_us.data.curation.dedup import HashIndex
from dinov3_us.data.curation.pixels import annotation_mask, sector_box
from dinov3_us.data.curation.splits import split_groups
from dinov3_us.errors import DataError


def _scan(seed: int, text: bool = False) -> Image.Image:
    """A fake frame: a speckled sector on black, a side panel of white 'text' separated by black."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((120, 160), np.uint8)
    arr[10:110, 20:120] = rng.integers(30, 140, size=(100, 100))
    if text:
        arr[20:23, 135:155] = 255
        arr[30:33, 135:150] = 255
    return Image.fromarray(arr)


def test_labelled_tree_with_groups_and_bad_files(tmp_path):
    root = tmp_path / "tree"
    for c, cls in enumerate(["brain", "femur"]):
        (root / cls).mkdir(parents=True)
        for patient in range(6):
            for k in range(2):
                _scan(100 * c + 10 * patient + k).save(root / cls / f"P{patient}_{k}.png")
    (root / "femur" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("ignored: not an image")
    manifest = build(tmp_path / "out", source="folder", root=root, group_regex=r"^[^/]+/(P\d+)_",
                     val_fraction=0.2, test_fraction=0.2)
    assert manifest["labels"] == ["brain", "femur"]
    assert manifest["skipped"] == {"group_regex_no_match": 1}  # broken.png has no patient id
    samples = check_consistent(tmp_path / "out")
    assert {s: sum(t.values()) for s, t in manifest["counts"].items()} == {"test": 4, "val": 4, "train": 16}
    meta = samples["train"][0]["meta"]
    assert meta["group"] == f"folder/{meta['patient']}" and meta["crop_box"] != [0, 0, 160, 120]
    manifest = build(tmp_path / "out2", source="folder", root=root)
    assert manifest["skipped"] == {"unreadable_image": 1} and set(manifest["counts"]) == {"train"}
    with pytest.raises(DataError, match="broken.png: unreadable_image"):
        build(tmp_path / "out3", source="folder", root=root, strict=True)


def test_unlabelled_flat_folder_and_near_duplicates(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(4):
        _scan(i).save(root / f"img{i}.png")
    _scan(0).save(root / "img0_copy.png")
    manifest = build(tmp_path / "out", source="folder", root=root)
    assert manifest["counts"] == {"unlabelled": {"null": 4}} and manifest["skipped"] == {"near_duplicate": 1}
    assert manifest["duplicates"][0]["distance"] == 0
    again = build(tmp_path / "out_b", source="folder", root=root, name="again", dedup_against=[tmp_path / "out"])
    assert again["num_samples"] == 0 and again["skipped"] == {"near_duplicate": 5}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        build(tmp_path / "o", source="folder", root=tmp_path / "empty")


def test_overlays_are_masked_and_sector_found():
    image = np.asarray(_scan(1, text=True))
    mask = annotation_mask(image)
    assert mask[20:23, 135:155].all() and not mask[40:100, 30:110].any()
    assert sector_box(image) == (18, 8, 122, 112)
    rgb = np.stack([image] * 3, axis=-1)
    rgb[60, 60] = (255, 255, 0)  # a yellow caliper pixel
    assert annotation_mask(rgb)[60, 60]


def test_split_groups_is_seeded_stratified_and_complete():
    groups = {f"g{i}": ["a"] * 3 if i < 30 else ["b", "b", "a"] for i in range(40)}
    first = split_groups(groups, {"val": 0.2, "test": 0.1}, seed=42)
    assert first == split_groups(dict(reversed(list(groups.items()))), {"val": 0.2, "test": 0.1}, seed=42)
    assert first != split_groups(groups, {"val": 0.2, "test": 0.1}, seed=1)
    assert sorted(first) == sorted(groups)
    val = [g for g, s in first.items() if s == "val"]
    assert len(val) == 8 and sum(int(g[1:]) >= 30 for g in val) == 2  # 'b'-majority share 10/40 -> 2 of 8
    assert sum(s == "test" for s in first.values()) == 4
    with pytest.raises(DataError):
        split_groups(groups, {"val": 0.7, "test": 0.5}, seed=0)


def test_hash_index_finds_neighbours_within_threshold():
    index = HashIndex(4)
    index.add("a", 0b1111)
    assert index.query(0b1111) == ("a", 0) and index.query(0b0000) == ("a", 4)
    assert index.query((1 << 63) | 0b0000_0001_0000) is None

"""Two builds of the same input give byte-identical folders, skipped.tsv included (no object addresses)."""

import re
import shutil

from curation_testutil import build

from dinov3_us.data.curation.records import SkipLog


def test_rebuild_is_byte_identical_including_skipped_tsv(data_dir, tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    for name in ("002_HC.png", "003_HC.png", "004_HC.png"):  # real HC18 scans
        shutil.copy(data_dir / "hc18" / "training_set" / name, root / name)
    real = (root / "004_HC.png").read_bytes()
    (root / "corrupt.png").write_bytes(b"not an image at all" * 8)  # PIL: UnidentifiedImageError(<BytesIO at 0x..>)
    (root / "truncated.png").write_bytes(real[: len(real) // 2])
    (root / "empty.png").write_bytes(b"")
    first = build(tmp_path / "a", source="folder", root=root)
    second = build(tmp_path / "b", source="folder", root=root, workers=2)  # other processes, other addresses
    assert first == second
    assert first["skipped"] == {"empty_file": 1, "unreadable_image": 2} and first["num_samples"] == 3
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and "skipped.tsv" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    skipped = (tmp_path / "a" / "skipped.tsv").read_text()
    assert "corrupt.png" in skipped and "UnidentifiedImageError" in skipped
    assert not re.search(r"0x[0-9a-fA-F]{4,}", skipped), skipped


def test_skip_details_drop_object_addresses():
    skips = SkipLog()
    skips.add("unreadable_mask", "m.png", "cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e40>")
    assert skips.entries == [["unreadable_mask", "m.png", "cannot identify image file <_io.BytesIO object>"]]

"""The shard format: dataset specs -> shards, the manifest, the key rule, reading and writing a tar."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from dinov3_us.data.curation.merge import iter_shard
from dinov3_us.data.curation.records import SkipLog
from dinov3_us.data.shards import (
    Shard,
    ShardWriter,
    check_shards,
    count_samples,
    expand_braces,
    is_shard_file,
    iter_samples,
    load_manifest,
    read_samples,
    resolve_shards,
    shard_name,
    split_key,
    split_specs,
    write_manifest,
    write_shard,
)
from dinov3_us.errors import DataError


def _write(path, n, start=0):
    samples = [(f"s{start + i:03d}", {"png": b"p%d" % i, "json": b"{}", "mask.png": b"m"}) for i in range(n)]
    return write_shard(path, samples)


@pytest.fixture
def curated(tmp_path):
    """A curated folder: train (relative urls, 2 shards) and val (absolute url) + an outside shard."""
    root = tmp_path / "ds"
    root.mkdir()
    _write(root / "train-000000.tar", 3)
    _write(root / "train-000001.tar", 2, start=3)
    _write(root / "val-000000.tar", 4, start=5)
    shards = {"train": [{"url": "train-000000.tar", "n": 3}, {"url": "train-000001.tar", "n": 2}],
              "val": [{"url": str(root / "val-000000.tar"), "n": 4}]}
    (root / "manifest.json").write_text(json.dumps({"source": "t", "shards": shards, "counts": {}}))
    return root


def test_folder_spec_with_and_without_splits(curated):
    everything = resolve_shards(str(curated))
    assert [(s.url, s.n) for s in everything] == [
        (str(curated / "train-000000.tar"), 3), (str(curated / "train-000001.tar"), 2),
        (str(curated / "val-000000.tar"), 4)]
    assert resolve_shards(f"{curated}:val") == everything[2:]
    assert resolve_shards(f"{curated}:val,train") == everything[2:] + everything[:2]
    assert resolve_shards(curated) == everything  # a Path works too


def test_missing_folder_manifest_and_split_are_named(curated, tmp_path):
    with pytest.raises(DataError, match=r"no split 'test'; available: train, val"):
        resolve_shards(f"{curated}:test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no manifest.json"):
        resolve_shards(str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"nowhere/x-000000.tar: no such shard file"):
        resolve_shards(str(tmp_path / "nowhere/x-{000000..000001}.tar"))
    (curated / "manifest.json").write_text(json.dumps({"shards": {"train": [{"url": "a.tar"}]}}))
    with pytest.raises(DataError, match="expected {'url': ..., 'n': int >= 0}"):
        resolve_shards(str(curated))


def test_brace_expansion():
    assert expand_braces("a/train-{000008..000011}.tar") == [f"a/train-{i:06d}.tar" for i in range(8, 12)]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(DataError, match="empty"):
        expand_braces("a-{3..1}.tar")


def test_brace_urls_take_counts_from_a_manifest_or_count(curated, tmp_path):
    assert resolve_shards(str(curated / "train-{000000..000001}.tar")) == resolve_shards(f"{curated}:train")
    bare = tmp_path / "bare"
    shutil.copytree(curated, bare)
    (bare / "manifest.json").unlink()
    got = resolve_shards(str(bare / "{train,val}-000000.tar"))
    assert [s.n for s in got] == [3, 4]
    assert resolve_shards(f"pipe:cat {bare}/train-{{000000..000001}}.tar") == [
        Shard(f"pipe:cat {bare}/train-000000.tar", 3), Shard(f"pipe:cat {bare}/train-000001.tar", 2)]
    with pytest.raises(DataError, match="cannot read this shard"):
        count_samples(f"pipe:cat {bare}/absent.tar 2>/dev/null")


def test_lists_of_shards_and_specs(curated):
    val = str(curated / "val-000000.tar")
    assert resolve_shards([(val, 4)]) == [Shard(val, 4)]
    assert resolve_shards([{"url": val, "n": 4}, f"{curated}:train"])[0] == Shard(val, 4)
    assert len(resolve_shards([f"{curated}:train", f"{curated}:val"])) == 3


def test_split_key_follows_webdataset():
    assert split_key("hc18_001_HC.mask.png") == ("hc18_001_HC", "mask.png")
    assert split_key("dir/sub/k1.json") == ("dir/sub/k1", "json")
    assert split_key("noext") == ("noext", "")


def test_read_samples_positions_and_truncation(curated):
    path = str(curated / "val-000000.tar")
    found, err = read_samples(path, [1, 3])
    assert err is None and sorted(found) == [1, 3]
    assert found[3] == ("s008", {"png": b"p3", "json": b"{}", "mask.png": b"m"})
    data = (curated / "val-000000.tar").read_bytes()
    (curated / "cut.tar").write_bytes(data[: len(data) // 2])
    found, err = read_samples(str(curated / "cut.tar"), range(4))
    assert 0 < len(found) < 4 and all(len(m) == 3 for _, m in found.values())
    found, err = read_samples(str(curated / "absent.tar"), [0])
    assert found == {} and "FileNotFoundError" in err


def test_split_specs_splits_on_semicolons():
    assert split_specs("a:train; b ;;c/x-{0..1}.tar ") == ["a:train", "b", "c/x-{0..1}.tar"]
    assert split_specs(" ; ") == []


def test_writer_is_deterministic_and_commits_atomically(tmp_path):
    samples = [("k0", {"png": b"a", "json": b"{}"}), ("k1", {"png": b"b", "json": b"{}", "mask.png": b"m"})]
    assert write_shard(tmp_path / "a.tar", samples) == 2
    writer = ShardWriter(tmp_path / shard_name("train", 3))
    assert writer.name == "train-000003.tar" and not writer.path.exists() and is_shard_file(writer.tmp.name)
    for key, members in samples:
        writer.write(key, members)
    assert writer.close() == "train-000003.tar"
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "train-000003.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert {(i.mtime, i.uid, i.gid, i.mode, i.uname) for i in tar} == {(0, 0, 0, 0o644, "")}
    aborted = ShardWriter(tmp_path / "train-000004.tar")
    aborted.write("k", {"png": b"x"})
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "train-000003.tar"]
    assert not is_shard_file("manifest.json") and is_shard_file("val-000000.tar.tmp")


def test_manifest_round_trip_and_validation(tmp_path):
    manifest = {"shards": {"train": [{"url": "train-000000.tar", "n": 3}]}, "labels": ["a"]}
    write_manifest(tmp_path, manifest)
    assert load_manifest(tmp_path) == manifest
    with pytest.raises(DataError, match="expected {'url': ..., 'n': int >= 0}"):
        write_manifest(tmp_path, {"shards": {"train": [{"url": "x.tar", "n": -1}]}})
    with pytest.raises(DataError, match="'shards' mapping"):
        write_manifest(tmp_path, {"counts": {}})
    assert load_manifest(tmp_path) == manifest  # a rejected manifest does not replace the file


def test_merge_and_loaders_read_keys_by_one_rule(tmp_path):
    write_shard(tmp_path / "d.tar", [("dir/k0", {"png": b"a"}), ("dir/k1", {"png": b"b", "mask.png": b"m"})])
    expected = [("dir/k0", {"png": b"a"}), ("dir/k1", {"png": b"b", "mask.png": b"m"})]
    assert [(k, m) for _, k, m in iter_samples(str(tmp_path / "d.tar"))] == expected
    skips = SkipLog(strict=False)
    assert list(iter_shard(tmp_path / "d.tar", skips, expected=2)) == expected and skips.counts == {}
    data = (tmp_path / "d.tar").read_bytes()
    with tarfile.open(tmp_path / "d.tar") as tar:
        boundary = tar.getmembers()[-1].offset  # cut between k1's png and its mask: k1 is incomplete
    (tmp_path / "cut.tar").write_bytes(data[:boundary])
    assert list(iter_shard(tmp_path / "cut.tar", skips, expected=2)) == expected[:1]
    assert skips.counts == {"truncated_shard": 1}


def test_a_manifest_listing_missing_or_empty_shards_fails_at_resolve(tmp_path):
    """A copy of a curated folder with shards deleted / emptied: one DataError before any sample is read."""
    import subprocess
    import sys
    from pathlib import Path

    from dinov3_us.data.loader import make_data_loader

    built = tmp_path / "built"
    cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "tools" / "build_dataset.py"), "--source",
           "phantom", "--out", str(built), "--num-samples", "60", "--image-size", "32", "--shard-size", "4",
           "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    total = len(resolve_shards(str(copy)))
    assert total >= 8
    (copy / "train-000001.tar").unlink()
    with pytest.raises(DataError, match=rf"^1 of {total} local shard files .*train-000001\.tar \(missing\)"):
        resolve_shards(str(copy))
    with pytest.raises(DataError, match=r"train-000001\.tar \(missing\)"):
        make_data_loader(str(copy), batch_size=2)  # the training loader's path: fails before the first batch
    (copy / "train-000003.tar").write_bytes(b"")
    for name in ("train-000000.tar", "train-000002.tar", "val-000000.tar"):
        (copy / name).unlink()
    n_train_val = len(resolve_shards(f"{built}:train,val"))
    with pytest.raises(DataError, match=rf"^5 of {n_train_val} .*000\.tar \(missing\), .*001\.tar \(missing\), .*"
                                        r"002\.tar \(missing\) and 2 more \(re-run tools/build_dataset\.py"):
        resolve_shards(f"{copy}:train,val")
    with pytest.raises(DataError, match=r"^1 of 1 .*train-000003\.tar \(0 bytes\)"):
        check_shards([Shard(str(copy / "train-000003.tar"), 4)])
    untouched = [(Path(s.url).name, s.n) for s in resolve_shards(f"{copy}:test")]  # other splits still resolve
    assert untouched == [(Path(s.url).name, s.n) for s in resolve_shards(f"{built}:test")]
    # pipe: urls are not checked (they can only be known by running them)
    assert resolve_shards([(f"pipe:cat {copy}/train-000001.tar", 4)]) == [Shard(f"pipe:cat {copy}/train-000001.tar", 4)]

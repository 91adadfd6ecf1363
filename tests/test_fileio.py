"""dinov3_us.fileio: atomic, durable writes that respect the umask and leave nothing behind on failure."""

from __future__ import annotations

import json
import os
import stat

import pytest

from dinov3_us.fileio import append_durable, atomic_path, link_atomic, write_atomic, write_json_atomic


def test_write_atomic_replaces_whole_files_with_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_atomic(tmp_path / "a" / "b.txt", "first")  # parents are created
        write_atomic(path, b"second")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"second" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.txt"]  # no temporary file left


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json_atomic(tmp_path / "x.json", {"b": 1, "a": 2}, sort_keys=True)
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert json.loads(path.read_text()) == {"a": 2, "b": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_append_durable_appends(tmp_path):
    append_durable(tmp_path / "j", b"1\n")
    append_durable(tmp_path / "j", b"2\n")
    assert (tmp_path / "j").read_bytes() == b"1\n2\n"


def test_link_atomic_gives_a_second_name_and_copies_where_there_are_no_hard_links(tmp_path, monkeypatch):
    source = write_atomic(tmp_path / "teacher.pth", b"weights")
    write_atomic(tmp_path / "eval" / "export.pth", b"older")
    link = link_atomic(source, tmp_path / "eval" / "export.pth")
    assert os.path.samefile(source, link) and link.read_bytes() == b"weights"
    write_atomic(source, b"the next best")  # a rewrite of one name leaves the other as it was
    assert link.read_bytes() == b"weights" and not os.path.samefile(source, link)

    def no_links(*_):
        raise OSError(1, "Operation not permitted")  # what a file system without hard links says

    monkeypatch.setattr(os, "link", no_links)
    copy = link_atomic(source, tmp_path / "copy.pth")
    assert copy.read_bytes() == b"the next best" and not os.path.samefile(source, copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pth", "eval", "teacher.pth"]  # no temporary left

"""dinov3_us.run_dir: the run folder's layout, its latest checkpoint and the training lock."""

from __future__ import annotations

import json
import os

import pytest

from dinov3_us.errors import ConfigError
from dinov3_us.run_dir import RunDir, training_lock


def test_layout_and_latest_complete_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run")
    assert RunDir(run) == run and os.fspath(run) == str(tmp_path / "run")
    assert run.teacher == tmp_path / "run" / "teacher.pth" and run.eval_dir("knn") == tmp_path / "run" / "eval" / "knn"
    assert run.export(9) == tmp_path / "run" / "eval" / "training_9" / "teacher_checkpoint.pth"
    assert run.latest() is None
    for it, complete in ((3, True), (7, True), (11, False)):
        folder = run.ckpt / str(it)
        folder.mkdir(parents=True)
        if complete:
            (folder / "COMPLETE.json").write_text(json.dumps({"iteration": it, "files": {}}))
    assert run.latest() == run.ckpt / "7"  # 11 has no marker
    assert RunDir.of_checkpoint(run.ckpt / "7") == run


def test_training_lock_admits_one_holder_at_a_time(tmp_path):
    run = RunDir(tmp_path / "run")
    with training_lock(run):
        assert f"pid {os.getpid()}" in run.lock_file.read_text()
        with pytest.raises(ConfigError, match=f"in use by another training \\(pid {os.getpid()}"), training_lock(run):
            pass
    with training_lock(run):  # released on exit
        pass

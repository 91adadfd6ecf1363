"""jobs.json bookkeeping, sacct/sinfo parsing and the requeue decision of the pretraining task (no cluster)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dinov3_us.errors import DataError
from dinov3_us.launch.cluster import parse_gres_gpus, sbatch_script, slurm_parameters
from dinov3_us.launch.jobs import JobsFile, parse_sacct
from dinov3_us.launch.stages import JobContext, JobFailedError, PretrainJob, should_requeue, signals_seen
from dinov3_us.run_dir import RunDir
from dinov3_us.train.signals import REQUEUE_EXIT_CODE, PreemptionFlag

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4),
                                         ("gpu:a100:4(S:0,1),shard:8", 4), ("gpu:v100:2,gpu:a100:2", 4)])
def test_gpus_per_node_from_sinfo_gres(gres, gpus):
    assert parse_gres_gpus(gres) == gpus


def test_parse_sacct_keeps_the_first_word_of_the_state():
    rows = parse_sacct("12|COMPLETED|0:0|n[1-2]\n13|CANCELLED by 0|0:0|None assigned\n\n14|PENDING|0:0|\n")
    assert rows == {"12": {"state": "COMPLETED", "exit_code": "0:0", "nodes": "n[1-2]"},
                    "13": {"state": "CANCELLED", "exit_code": "0:0", "nodes": "None assigned"},
                    "14": {"state": "PENDING", "exit_code": "0:0", "nodes": ""}}


def _launch(tmp_path) -> JobsFile:
    jf = JobsFile(tmp_path / "jobs.json")
    jf.write({"cluster": "slurm", "jobs": {
        "pretrain": {"job_id": "1", "state": "RUNNING", "depends_on": []},
        "convert": {"job_id": "2", "state": "PENDING", "depends_on": ["pretrain"]},
        "linear": {"job_id": "3", "state": "PENDING", "depends_on": ["convert"]},
        "knn": {"job_id": "4", "state": "PENDING", "depends_on": ["convert"]}}})
    return jf


def test_sbatch_script_shows_every_option_and_the_requeue_signal(tmp_path):
    from dinov3_us.launch.cluster import ClusterOptions, Resources

    params = slurm_parameters("dinov3_us.convert", Resources(2, 4, 4, 600), ClusterOptions(account="proj", mem="200G"),
                              "afterok:<pretrain>")
    script = sbatch_script(tmp_path, params)
    for line in ("#SBATCH --job-name=dinov3_us.convert", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --account=proj", "#SBATCH --mem=200G",
                 "#SBATCH --dependency='afterok:<pretrain>'", "#SBATCH --kill-on-invalid-dep=yes",
                 "#SBATCH --signal=USR2@90", "srun --kill-on-bad-exit=1 "):
        assert line in script, line
    assert script.startswith("#!/bin/bash\n") and str(tmp_path) in script.splitlines()[-1]


def test_update_job_only_touches_its_own_job_id(tmp_path):
    jf = _launch(tmp_path)
    assert jf.update_job("pretrain", job_id="1", state="COMPLETED")
    assert not jf.update_job("convert", job_id="99", state="RUNNING")  # a job of another launch
    data = jf.read()
    assert data["jobs"]["pretrain"]["state"] == "COMPLETED" and data["jobs"]["convert"]["state"] == "PENDING"
    assert "updated" in data and not list(tmp_path.glob(".jobs.json.*.tmp"))


class _BadShards(PretrainJob):
    def work(self, ctx):
        raise DataError("shard train-000000.tar: not a tar file")


def test_a_user_error_fails_the_job_and_records_it_for_the_report(tmp_path):
    jf = _launch(tmp_path)
    job = _BadShards("pretrain", RunDir(tmp_path), str(tmp_path))
    with pytest.raises(JobFailedError, match="exited with code 2: error \\(rank 0\\): shard train-000000.tar"):
        job()
    jobs = jf.read()["jobs"]
    assert "not a tar file" in jobs["pretrain"]["error"] and jobs["pretrain"]["command"].startswith("python tools/")
    # the states are SLURM's (sacct), which also cancels the dependents (--kill-on-invalid-dep): not written here
    assert [jobs[n]["state"] for n in ("pretrain", "convert", "linear", "knn")] == ["RUNNING"] + ["PENDING"] * 3


def test_signals_seen_records_signals_whoever_handles_them():
    flag = PreemptionFlag().install()  # the trainer's own handlers, which do not chain
    try:
        with signals_seen() as seen:
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        flag.restore()
    assert flag.requested and seen == {int(signal.SIGUSR2), int(signal.SIGTERM)}


def test_requeue_decision():
    usr1, usr2, term = int(signal.SIGUSR1), int(signal.SIGUSR2), int(signal.SIGTERM)
    assert should_requeue({usr2}) and should_requeue({usr1}) and should_requeue({term, usr2})  # submitit preemption
    assert not should_requeue({term})  # scancel, or SLURM's own preemption (which requeues by itself)
    assert should_requeue(set())  # the signal reached another rank only


def test_rank0_hands_a_usr2_to_submitits_handler(tmp_path, monkeypatch):
    jf = _launch(tmp_path)
    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)
        raise SystemExit(-1)  # what submitit's handler does after `scontrol requeue`

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        task = PretrainJob("pretrain", RunDir(tmp_path), str(tmp_path))
        ctx = JobContext("slurm", "1", 0, 2, 1, 0)
        with pytest.raises(SystemExit):
            task.preempted(ctx, {int(signal.SIGUSR2)})
        assert calls == [signal.SIGUSR2]
        record = jf.read()["jobs"]["pretrain"]
        assert record["note"].startswith("requeued after SIGUSR2") and "requeued_at" in record
        calls.clear()
        with pytest.raises(SystemExit) as exc:  # SIGTERM alone: keep the checkpoint, do not requeue
            task.preempted(ctx, {int(signal.SIGTERM)})
        assert exc.value.code == REQUEUE_EXIT_CODE and calls == []
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_without_submitit_a_preempted_run_fails_with_a_resume_hint(tmp_path):
    _launch(tmp_path)
    task = PretrainJob("pretrain", RunDir(tmp_path), str(tmp_path))
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with pytest.raises(JobFailedError, match="--resume"):
            task.preempted(JobContext("debug", "1", 0, 1, 1, 0), {int(signal.SIGUSR2)})
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert "--resume" in json.loads((tmp_path / "jobs.json").read_text())["jobs"]["pretrain"]["error"]


def test_usr2_outside_the_training_loop_is_left_to_submitit(tmp_path):
    """A USR2 before the trainer owns the signals reaches submitit's handler, which requeues and exits:
    the job must exit too, without recording an error."""
    jf = _launch(tmp_path)

    class Task(PretrainJob):
        def work(self, ctx):  # model building: the trainer does not own the signals yet
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(5)

    def submitit_handler(signum, frame):
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit) as exc:
            Task("pretrain", RunDir(tmp_path), str(tmp_path))()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exc.value.code == -1
    jobs = jf.read()["jobs"]
    assert "error" not in jobs["pretrain"] and jobs["pretrain"]["restarts"] == 0


def _status(folder) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launchers" / "status.py"), str(folder)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_status_looks_one_level_down_for_the_launch(tmp_path):
    demo = tmp_path / "demo"
    JobsFile(demo / "pretrain" / "jobs.json").write(
        {"cluster": "local", "jobs": {"pretrain": {"job_id": "11", "state": "RUNNING", "depends_on": []}}})
    proc = _status(demo)
    assert proc.returncode == 0, proc.stderr
    assert f"following the launch in {demo / 'pretrain'}" in proc.stderr and "RUNNING" in proc.stdout
    JobsFile(demo / "eval" / "jobs.json").write(
        {"cluster": "local", "jobs": {"knn": {"job_id": "12", "state": "RUNNING", "depends_on": []}}})
    proc = _status(demo)
    assert proc.returncode == 2 and "2 launches one level down" in proc.stderr
    assert str(demo / "eval") in proc.stderr and str(demo / "pretrain") in proc.stderr
    proc = _status(tmp_path / "nothing")
    assert proc.returncode == 2 and "nothing was launched there" in proc.stderr

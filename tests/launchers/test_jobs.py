"""jobs.json bookkeeping, sacct/sinfo parsing and the requeue decision of the pretraining task (no cluster)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from dinov3_us.train.signals import REQUEUE_EXIT_CODE, PreemptionFlag
from launchers.common import parse_gres_gpus
from launchers.jobs import JobsFile, downstream, parse_sacct
from launchers.tasks import JobContext, JobFailedError, PretrainTask, should_requeue, signals_seen


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


def test_downstream_follows_dependencies(tmp_path):
    jobs = _launch(tmp_path).read()["jobs"]
    assert downstream(jobs, "pretrain") == ["convert", "linear", "knn"]
    assert downstream(jobs, "convert") == ["linear", "knn"]
    assert downstream(jobs, "knn") == []


def test_update_job_only_touches_its_own_job_id(tmp_path):
    jf = _launch(tmp_path)
    assert jf.update_job("pretrain", job_id="1", state="COMPLETED")
    assert not jf.update_job("convert", job_id="99", state="RUNNING")  # a job of another launch
    data = jf.read()
    assert data["jobs"]["pretrain"]["state"] == "COMPLETED" and data["jobs"]["convert"]["state"] == "PENDING"
    assert "updated" in data and not list(tmp_path.glob(".jobs.json.*.tmp"))


def test_failing_task_marks_itself_failed_and_cancels_its_dependents(tmp_path):
    jf = _launch(tmp_path)
    task = PretrainTask("pretrain", [], str(tmp_path), str(tmp_path))
    with pytest.raises(JobFailedError, match="exited with code 2: error: bad shard"):
        task.finish(JobContext("local", "1", 0, 1, 1, 0), 2, ["error: bad shard"])
    jobs = jf.read()["jobs"]
    assert jobs["pretrain"]["state"] == "FAILED" and "bad shard" in jobs["pretrain"]["error"]
    assert [jobs[n]["state"] for n in ("convert", "linear", "knn")] == ["CANCELLED"] * 3
    assert jobs["knn"]["note"] == "cancelled: pretrain failed"


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
        task = PretrainTask("pretrain", [], str(tmp_path), str(tmp_path))
        ctx = JobContext("slurm", "1", 0, 2, 1, 0)
        with pytest.raises(SystemExit):
            task.preempted(ctx, {int(signal.SIGUSR2)})
        assert calls == [signal.SIGUSR2]
        assert jf.read()["jobs"]["pretrain"]["state"] == "REQUEUED"
        calls.clear()
        with pytest.raises(SystemExit) as exc:  # SIGTERM alone: keep the checkpoint, do not requeue
            task.preempted(ctx, {int(signal.SIGTERM)})
        assert exc.value.code == REQUEUE_EXIT_CODE and calls == []
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_without_submitit_a_preempted_run_fails_with_a_resume_hint(tmp_path):
    _launch(tmp_path)
    task = PretrainTask("pretrain", [], str(tmp_path), str(tmp_path))
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with pytest.raises(JobFailedError, match="--resume"):
            task.preempted(JobContext("debug", "1", 0, 1, 1, 0), {int(signal.SIGUSR2)})
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert json.loads((tmp_path / "jobs.json").read_text())["jobs"]["convert"]["state"] == "CANCELLED"


def test_usr2_outside_the_training_loop_is_left_to_submitit(tmp_path):
    """A USR2 before the trainer owns the signals reaches submitit's handler, which requeues and exits:
    the task must exit too, without marking itself failed or cancelling its dependents."""
    jf = _launch(tmp_path)
    tool = tmp_path / "fake_train.py"
    tool.write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGUSR2)\ntime.sleep(5)\n")

    class Task(PretrainTask):
        script = str(tool)  # run_tool joins it to tools/: an absolute path replaces that

    def submitit_handler(signum, frame):
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit) as exc:
            Task("pretrain", [], str(tmp_path), str(tmp_path))()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exc.value.code == -1
    jobs = jf.read()["jobs"]
    assert jobs["pretrain"]["state"] == "RUNNING" and jobs["convert"]["state"] == "PENDING"

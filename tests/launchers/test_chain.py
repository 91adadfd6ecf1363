"""The launchers end to end: on the two-node SLURM cluster of ../shared/tools/slurm_local.sh, and without SLURM.

Every run is the tiny CPU recipe on 2 nodes x 1 process (gloo across the nodes), 1 thread per process.
The SLURM tests skip, saying why, when no cluster is up (`make test` starts one).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from launcher_helpers import read_jobs, run_launcher, sacct_states, tiny_args
from ports import HeldPorts

pytestmark = pytest.mark.slow  # minutes in all: CI runs them too
slurm = pytest.mark.slurm


def _files(out: Path) -> set[str]:
    """Outputs of a run, relative, without the per-launch submitit folder and TensorBoard's host-named file."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
            and p.relative_to(out).parts[0] != "submitit" and not p.name.startswith(("events.out.", ".jobs.json"))}


@pytest.fixture(scope="module")
def slurm_chain(slurm_cluster, phantom_shards, tmp_path_factory):
    """`submit_pretrain.py --nodes 2 --wait` on the cluster: (output dir, completed process)."""
    out = tmp_path_factory.mktemp("slurm_chain") / "run"
    proc = run_launcher("submit_pretrain.py", tiny_args(phantom_shards, out, "--wait"))
    return out, proc


def submitit_rule_port(job_id: int) -> int:
    """The port submitit's TorchDistributedEnvironment draws for a job (the launchers used it until the rendezvous
    became the kernel's choice): a local job's id is its controller's pid."""
    return random.Random(str(job_id)).randint(20000, 60000)


@pytest.fixture(scope="module")
def local_chain(phantom_shards, no_srun_env, tmp_path_factory):
    """The same command on a machine without `srun`: it falls back to a local run. Meanwhile the ports that the
    old rule would give the next 1,500 process ids are held, so the pretraining job's controller gets one that
    is taken (test_without_srun_... checks that it did): the ranks must not depend on it."""
    out = tmp_path_factory.mktemp("local_chain") / "run"
    last_pid = int(Path("/proc/loadavg").read_text().split()[-1])
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with HeldPorts() as held:
        for pid in range(last_pid + 1, last_pid + 1501):
            held.listen(submitit_rule_port(pid if pid < pid_max else 300 + pid - pid_max))  # the kernel wraps at 300
        proc = run_launcher("submit_pretrain.py", tiny_args(phantom_shards, out), env=no_srun_env)
        return out, proc, held.listening


@slurm
def test_two_node_chain_runs_to_results_and_every_job_completes(slurm_chain):
    out, proc = slurm_chain
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = read_jobs(out)
    assert jobs["cluster"] == "slurm" and list(jobs["jobs"]) == ["pretrain", "linear", "knn"]
    ids = [r["job_id"] for r in jobs["jobs"].values()]
    assert sacct_states(ids) == [(i, "COMPLETED") for i in ids]
    assert all(r["state"] == "COMPLETED" for r in jobs["jobs"].values())
    pre = jobs["jobs"]["pretrain"]
    assert pre["nodes"] == 2 and pre["nodelist"] == "n[1-2]" and pre["restarts"] == 0
    assert jobs["jobs"]["linear"]["depends_on"] == jobs["jobs"]["knn"]["depends_on"] == ["pretrain"]
    teacher = json.loads((out / "teacher.json").read_text())  # written by the pretraining itself
    assert teacher["iteration"] == 19 and teacher["source"] == str(out / "ckpt" / "19")
    # one process per node, in one gloo group of 2
    assert "FSDP2: 2 ranks" in (out / "log.txt").read_text()
    rank1_log = Path(pre["stdout"].replace("_0_log.out", "_1_log.out")).read_text()
    assert "rank 1/2 on n2" in rank1_log
    for name in ("linear", "knn"):
        results = json.loads((out / "eval" / name / "results.json").read_text())
        assert results["task"] == name and results["n"]["test"] > 0 and 0 <= results["metrics"]["weighted_f1"] <= 1
        assert results["weights"]["path"] == str(out / "teacher.pth")
    report = (out / "eval" / "comparison.md").read_text()
    # one row in the results table, one in the table against the random initialisation of the same architecture
    assert report.count("| linear") == 2 and "Against a random initialisation of the same architecture" in report
    for name in ("linear", "knn"):
        baseline = json.loads((out / "eval" / name / "baseline_random" / "results.json").read_text())
        assert baseline["weights"]["kind"] == "random"
        assert baseline["weights"]["architecture_of"] == str(out / "teacher.pth")
    assert "Report: " + str(out / "eval" / "comparison.md") in proc.stdout
    assert re.search(r"pretrain \(job \d+\): COMPLETED", proc.stdout)


@slurm
def test_usr2_checkpoints_requeues_and_resumes_without_recomputing(slurm_cluster, phantom_shards, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(phantom_shards, out, "--no-eval", "optim.epochs=3", "train.OFFICIAL_EPOCH_LENGTH=20",
                     "checkpointing.period=100", "train.log_period=1")
    proc = run_launcher("submit_pretrain.py", args)
    assert proc.returncode == 0, proc.stderr
    job_id = read_jobs(out)["jobs"]["pretrain"]["job_id"]
    again = run_launcher("submit_pretrain.py", args)  # a second launch into a folder with live jobs is refused
    assert again.returncode == 2 and "still queued or running" in again.stderr and f"scancel {job_id}" in again.stderr
    metrics = out / "training_metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 6):
        assert time.monotonic() < deadline, "pretraining did not start"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    status = run_launcher("status.py", [str(out), "--wait", "--poll", "1"], timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr

    assert [s for _, s in sacct_states([job_id], duplicates=True)] == ["REQUEUED", "COMPLETED"]
    record = read_jobs(out)["jobs"]["pretrain"]
    assert record["restarts"] == 1 and record["state"] == "COMPLETED"
    stdout = Path(record["stdout"]).read_text()
    assert "SIGUSR2 received; checkpoint" in stdout and "Requeued job" in stdout
    assert "pretrain attempt 2 (SLURM_RESTART_COUNT=1)" in stdout

    log = (out / "log.txt").read_text()
    resumed = re.findall(r"Resuming from (\S+)/ckpt/(\d+) at iteration", log)
    assert len(resumed) == 1, log
    ckpt_it = int(resumed[0][1])
    first, second = log.split("Resuming from", 1)
    done_before = [int(n) - 1 for n in re.findall(r"INFO it (\d+)/60", first)]  # iteration indices
    done_after = [int(n) - 1 for n in re.findall(r"INFO it (\d+)/60", second)]
    assert done_before[-1] == ckpt_it  # the step in progress when USR2 came was finished and saved
    assert done_after[0] == ckpt_it + 1  # ... and nothing before it was run again
    assert done_before + done_after == list(range(60))  # the final count, every iteration exactly once
    assert [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()] == list(range(60))


@slurm
def test_failing_pretraining_cancels_the_evaluations(slurm_cluster, phantom_shards, tmp_path):
    shards = tmp_path / "corrupt"
    shutil.copytree(phantom_shards, shards)
    (next(shards.glob("train-*.tar"))).write_bytes(b"\0" * 4096)  # the manifest still promises its samples
    out = tmp_path / "run"
    proc = run_launcher("submit_pretrain.py", tiny_args(shards, out, "--wait", "data.strict=true"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    jobs = read_jobs(out)["jobs"]
    ids = {name: r["job_id"] for name, r in jobs.items()}
    assert dict(sacct_states(list(ids.values()))) == {ids["pretrain"]: "FAILED", ids["linear"]: "CANCELLED",
                                                     ids["knn"]: "CANCELLED"}
    assert jobs["pretrain"]["state"] == "FAILED" and "exited with code 2: error (rank" in jobs["pretrain"]["error"]
    assert all(jobs[n]["state"] == "CANCELLED" for n in ("linear", "knn"))
    assert f"FAILED: pretrain (job {ids['pretrain']})" in proc.stdout
    assert "CANCELLED: linear" in proc.stdout and "--resume" in proc.stdout
    assert not (out / "teacher.pth").exists() and not (out / "eval" / "linear").exists()


@slurm
def test_gpus_requested_on_the_cpu_partition_is_refused(slurm_cluster, phantom_shards, tmp_path):
    out = tmp_path / "run"
    proc = run_launcher("submit_pretrain.py", tiny_args(phantom_shards, out, "--gpus-per-node", "2",
                                                        "runtime.device=auto"))
    assert proc.returncode == 2 and "partition debug has no GPUs" in proc.stderr
    assert not (out / "jobs.json").exists()


@slurm
def test_a_chain_slurm_refuses_is_reported_and_nothing_is_left_queued(slurm_cluster, phantom_shards, tmp_path):
    out = tmp_path / "run"
    proc = run_launcher("submit_pretrain.py", tiny_args(phantom_shards, out, "--constraint", "h100"))
    assert proc.returncode == 2 and "SLURM refused job pretrain" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {r["state"] for r in read_jobs(out)["jobs"].values()} == {"CANCELLED"}


def test_without_srun_the_launcher_runs_the_chain_locally(local_chain):
    out, proc, held = local_chain
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no `srun` on PATH" in proc.stdout and "2 nodes x 1 = 2 CPU processes" in proc.stdout
    jobs = read_jobs(out)
    assert jobs["cluster"] == "local"
    assert [r["state"] for r in jobs["jobs"].values()] == ["COMPLETED"] * 3
    assert "FSDP2: 2 ranks" in (out / "log.txt").read_text()
    assert (out / "eval" / "linear" / "results.json").is_file() and (out / "eval" / "comparison.md").is_file()
    assert submitit_rule_port(int(jobs["jobs"]["pretrain"]["job_id"])) in held  # the old rule's port was taken
    assert "(a port of the kernel's choosing, published by rank 0 in" in (out / "log.txt").read_text()
    assert not (out / ".rendezvous").exists()  # removed once the group had formed


def test_submit_eval_takes_a_runs_teacher_and_converts_a_checkpoint_first(local_chain, phantom_shards, tmp_path):
    run, _, _ = local_chain
    out = tmp_path / "ev"
    base = ["--cluster", "local", "--dataset", str(phantom_shards), "--eval-config", "knn"]
    proc = run_launcher("submit_eval.py", [*base, "--weights", str(run), "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = read_jobs(out)["jobs"]
    assert list(jobs) == ["knn"] and jobs["knn"]["depends_on"] == []  # the run's own teacher.pth: no conversion
    results = json.loads((out / "eval" / "knn" / "results.json").read_text())
    assert results["weights"]["path"] == str(run / "teacher.pth") and results["weights"]["iteration"] == 19
    assert results["metrics"] == json.loads((run / "eval" / "knn" / "results.json").read_text())["metrics"]
    out = tmp_path / "ev9"  # a mid-run checkpoint: converted by its own job, which the evaluation waits for
    proc = run_launcher("submit_eval.py", [*base, "--weights", str(run / "ckpt" / "9"), "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = read_jobs(out)["jobs"]
    assert list(jobs) == ["convert", "knn"] and jobs["knn"]["depends_on"] == ["convert"]
    assert jobs["convert"]["command"].endswith(f"{run}/ckpt/9 --output {out}/teacher.pth")
    results = json.loads((out / "eval" / "knn" / "results.json").read_text())
    assert results["weights"]["path"] == str(out / "teacher.pth") and results["weights"]["iteration"] == 9


@slurm
def test_local_fallback_gives_the_same_outputs_as_slurm(slurm_chain, local_chain):
    (s_out, s_proc), (l_out, l_proc, _) = slurm_chain, local_chain
    assert s_proc.returncode == 0 and l_proc.returncode == 0
    assert _files(s_out) == _files(l_out)
    s_metrics = [json.loads(x) for x in (s_out / "training_metrics.jsonl").read_text().splitlines()]
    l_metrics = [json.loads(x) for x in (l_out / "training_metrics.jsonl").read_text().splitlines()]
    assert [m["total_loss"] for m in s_metrics] == [m["total_loss"] for m in l_metrics]
    s_teacher, l_teacher = torch.load(s_out / "teacher.pth"), torch.load(l_out / "teacher.pth")
    assert s_teacher.keys() == l_teacher.keys()
    assert all(torch.equal(s_teacher[k], l_teacher[k]) for k in s_teacher)
    for name in ("linear", "knn"):
        s_res = json.loads((s_out / "eval" / name / "results.json").read_text())
        l_res = json.loads((l_out / "eval" / name / "results.json").read_text())
        assert s_res["metrics"] == l_res["metrics"]

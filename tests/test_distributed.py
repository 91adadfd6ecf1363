"""Device / backend resolution and SLURM environment parsing."""

import os
import subprocess
import sys

import pytest
import torch

from dinov3_us.distributed import first_slurm_host, resolve_backend, resolve_device
from dinov3_us.errors import ConfigError


def test_device_and_backend():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"
    if torch.cuda.is_available():  # a GPU host: auto picks it, and cuda works
        assert resolve_device("auto").type == "cuda" and resolve_device("cuda").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="needs runtime.device=cuda"):
        resolve_backend("nccl", torch.device("cpu"))


@pytest.mark.parametrize("nodelist, first", [("n1", "n1"), ("n[1-3,5]", "n1"), ("gpu-a[07-09],gpu-b1", "gpu-a07")])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_srun_style_environment_becomes_a_process_group(tmp_path):
    """SLURM_* variables alone (as srun sets them, no torchrun) are enough to start the process group."""
    code = ("from dinov3_us.distributed import init_distributed; i = init_distributed('cpu', 'gloo'); "
            "print(i.rank, i.world_size, i.backend)")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env |= {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "localhost",
            "SLURM_JOB_ID": str(4242 + os.getpid() % 1000)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "gloo"]

"""Process planning and distributed set-up (trainer/distributed.py) without a GPU."""

import pytest
import torch

from shards.errors import UserError
from trainer.distributed import plan_processes, setup_distributed


def test_plans():
    gpus = torch.cuda.device_count()
    assert plan_processes(0, None) == (1, "cpu")
    assert plan_processes(None, 3) == (3, "cpu")
    assert plan_processes(0, 2) == (2, "cpu")
    assert plan_processes(None, None) == ((gpus, "cuda") if gpus else (1, "cpu"))


def test_impossible_plans_are_user_errors():
    gpus = torch.cuda.device_count()
    with pytest.raises(UserError, match=f"--gpus {gpus + 1} asked for .* {gpus} CUDA device"):
        plan_processes(gpus + 1, None)
    with pytest.raises(UserError, match="either --gpus N or --procs N"):
        plan_processes(1, 2)
    with pytest.raises(UserError, match="--procs must be at least 1"):
        plan_processes(None, 0)
    with pytest.raises(UserError, match="--gpus must be 0"):
        plan_processes(-1, None)


def test_single_process_setup(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = setup_distributed("cpu")
    assert (info.rank, info.local_rank, info.world_size, info.device.type) == (0, 0, 1, "cpu")
    assert info.is_primary and not info.distributed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU errors")
def test_nccl_or_cuda_without_gpus_is_a_user_error():
    with pytest.raises(UserError, match="NCCL backend needs GPUs"):
        setup_distributed("cpu", backend="nccl")
    with pytest.raises(UserError, match="no GPU is visible"):
        setup_distributed("cuda")

"""The Horovod that scripts/build_horovod.sh installs works: two gloo ranks under `horovodrun` on this CPU.

Horovod 0.28.1 only builds against recent torch after the C++ standard patch, and a build that compiles can
still fail at import (ABI) or at the first collective, so this runs real collectives in real processes: an
allreduce with a known sum, and DistributedOptimizer steps compared with full-batch SGD in one process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

STEPS = 3
LEARNING_RATE = 0.1
FEATURES, OUTPUTS, BATCH_PER_RANK = 4, 2, 8

RANK_SCRIPT = textwrap.dedent(
    f"""
    import json
    import horovod.torch as hvd
    import torch

    torch.set_num_threads(1)
    hvd.init()
    rank, size = hvd.rank(), hvd.size()

    # Allreduce: rank r contributes [r + 1, 10 (r + 1)].
    contribution = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])
    total = hvd.allreduce(contribution, op=hvd.Sum, name="sum").tolist()
    mean = hvd.allreduce(contribution, name="mean").tolist()

    # DistributedOptimizer: each rank starts from its own weights and sees its own batch; rank 0's weights
    # are broadcast, gradients averaged, so all ranks take the full-batch step.
    torch.manual_seed(100 + rank)
    model = torch.nn.Linear({FEATURES}, {OUTPUTS})
    generator = torch.Generator().manual_seed(rank)
    inputs = torch.randn({BATCH_PER_RANK}, {FEATURES}, generator=generator)
    targets = torch.randn({BATCH_PER_RANK}, {OUTPUTS}, generator=generator)
    optimizer = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr={LEARNING_RATE}), named_parameters=model.named_parameters()
    )
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    for _ in range({STEPS}):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    parameters = [p.detach().flatten().tolist() for p in model.parameters()]
    print("RESULT " + json.dumps(dict(rank=rank, size=size, sum=total, mean=mean, parameters=parameters)), flush=True)
    """
)


def horovodrun() -> Path:
    path = Path(sysconfig.get_path("scripts")) / "horovodrun"
    assert path.exists(), f"{path} missing: run `bash scripts/build_horovod.sh {sys.executable}` (make horovod)"
    return path


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    script = tmp_path_factory.mktemp("horovod") / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [str(horovodrun()), "--gloo", "-np", "2", "-H", "localhost:2", "--start-timeout", "60",
               sys.executable, str(script)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{output[-3000:]}"
    results = [json.loads(m) for m in re.findall(r"RESULT (\{.*\})", output)]
    by_rank = {r["rank"]: r for r in results}
    assert sorted(by_rank) == [0, 1] and len(results) == 2, f"expected one result per rank:\n{output[-3000:]}"
    return by_rank


def full_batch_sgd_parameters() -> list[list[float]]:
    """What the two ranks must end with: rank 0's initial weights, SGD on both ranks' batches at once."""
    torch.manual_seed(100)
    model = torch.nn.Linear(FEATURES, OUTPUTS)
    batches = []
    for rank in range(2):
        generator = torch.Generator().manual_seed(rank)
        batches.append((torch.randn(BATCH_PER_RANK, FEATURES, generator=generator),
                        torch.randn(BATCH_PER_RANK, OUTPUTS, generator=generator)))
    inputs = torch.cat([b[0] for b in batches])
    targets = torch.cat([b[1] for b in batches])
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    for _ in range(STEPS):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    return [p.detach().flatten().tolist() for p in model.parameters()]


def test_two_gloo_ranks_allreduce_to_the_exact_sum_and_mean(two_rank_results: dict[int, dict]) -> None:
    for rank, result in two_rank_results.items():
        assert result["size"] == 2
        assert result["sum"] == [3.0, 30.0], f"rank {rank} summed to {result['sum']}"
        assert result["mean"] == [1.5, 15.0], f"rank {rank} averaged to {result['mean']}"


def test_distributed_optimizer_keeps_ranks_identical_and_equal_to_full_batch_sgd(
    two_rank_results: dict[int, dict],
) -> None:
    rank0, rank1 = two_rank_results[0]["parameters"], two_rank_results[1]["parameters"]
    assert rank0 == rank1, "ranks diverged: parameters differ after DistributedOptimizer steps"
    expected = full_batch_sgd_parameters()
    for got, want in zip(rank0, expected, strict=True):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-6), f"{got} != full-batch SGD {want}"

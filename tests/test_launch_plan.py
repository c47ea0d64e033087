"""`lanex launch` chooses the launcher and its flags from the environment (pure planning)."""

import time
from pathlib import Path

import pytest

from lanex_trainer.distributed import DistributedError, detect_world, rendezvous_address
from lanex_trainer.launch import LaunchError, plan_launch, results_path_of, termination_message

TRAIN = ["lanex", "train", "--data-root", "/mnt/tusimple_data", "--output-dir", "/mnt/experiments/x"]


def test_mpijob_launcher_with_horovod_runs_horovodrun_over_the_hostfile(tmp_path: Path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("exp-train-worker-0 slots=1\nexp-train-worker-1 slots=1\nexp-train-worker-2 slots=1\n")
    plan = plan_launch(TRAIN, "horovod", environ={"LANEX_MPI_HOSTFILE": str(hostfile), "RUNAI_MPI_NUM_WORKERS": "3"})
    assert plan.argv[:5] == ["horovodrun", "-np", "3", "--hostfile", str(hostfile)]
    assert plan.argv[5:] == TRAIN and plan.env["LANEX_BACKEND"] == "horovod"


def test_mpijob_launcher_with_torch_runs_mpirun_and_rendezvous_at_first_host(tmp_path: Path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# workers\nexp-train-worker-0 slots=2\nexp-train-worker-1 slots=2\n")
    plan = plan_launch(TRAIN, "torch", environ={"LANEX_MPI_HOSTFILE": str(hostfile), "PATH": "/usr/bin"})
    assert plan.launcher == "mpirun" and plan.processes == 4
    assert plan.env["MASTER_ADDR"] == "exp-train-worker-0"
    argv = plan.argv
    assert argv[:5] == ["mpirun", "-np", "4", "--hostfile", str(hostfile)]
    for name in ("MASTER_ADDR", "MASTER_PORT", "PATH", "LANEX_BACKEND"):
        assert argv[argv.index(name) - 1] == "-x"


def test_outside_an_mpijob_torch_uses_torchrun(tmp_path: Path):
    plan = plan_launch(TRAIN, "torch", processes=2, environ={"LANEX_MPI_HOSTFILE": str(tmp_path / "none")})
    assert plan.argv[:3] == ["torchrun", "--no-python", "--nnodes=1"] and "--nproc-per-node=2" in plan.argv


def test_empty_command_is_an_error():
    with pytest.raises(LaunchError, match="no training command"):
        plan_launch([], "torch", environ={})


def test_results_path_and_compact_termination_message(tmp_path: Path):
    assert results_path_of(TRAIN) == Path("/mnt/experiments/x/results.json")
    results = tmp_path / "results.json"
    results.write_text('{"accuracy": 0.93, "fp": 0.1, "fn": 0.05, "checkpoint": "/mnt/x/best.pt", "history": [1, 2, 3]}')
    message = termination_message(results)
    assert '"accuracy":0.93' in message and "history" not in message


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (1, 2, 1, "torchrun")),
        ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, (2, 3, 0, "mpirun")),
        ({"PMI_RANK": "1", "PMI_SIZE": "4"}, (1, 4, 1, "pmi")),
        ({"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "0"}, (0, 2, 0, "horovodrun")),
        ({}, (0, 1, 0, "single")),
    ],
)
def test_rank_discovery_follows_the_launcher(environ, expected):
    world = detect_world(environ)
    assert (world.rank, world.world_size, world.local_rank, world.launcher) == expected


def test_rank_outside_world_is_rejected():
    with pytest.raises(DistributedError, match="RANK=3 is outside 0..1"):
        detect_world({"RANK": "3", "WORLD_SIZE": "2"})


def test_rendezvous_prefers_master_addr_then_hostfile(tmp_path: Path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    assert rendezvous_address({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}) == ("10.0.0.1", 1234)
    assert rendezvous_address({"LANEX_MPI_HOSTFILE": str(hostfile)}) == ("node-a", 29500)
    with pytest.raises(DistributedError, match="does not exist"):
        rendezvous_address({"LANEX_MPI_HOSTFILE": str(tmp_path / "missing")})


def test_each_launch_is_a_new_run_whose_ranks_end_with_it_and_learn_its_job(tmp_path: Path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("exp-train-worker-0 slots=1\nexp-train-worker-1 slots=1\n")
    environ = {"LANEX_MPI_HOSTFILE": str(hostfile), "LANEX_JOB": "team/exp"}
    first = plan_launch(TRAIN, "torch", environ=environ)
    time.sleep(0.001)  # run ids order by start time, to the microsecond
    restarted = plan_launch(TRAIN, "torch", environ=environ)
    assert first.env["LANEX_RUN_ID"] < restarted.env["LANEX_RUN_ID"]  # a restarted launcher's run sorts later
    assert first.env["LANEX_DIE_WITH_PARENT"] == "1"
    for name in ("LANEX_RUN_ID", "LANEX_JOB", "LANEX_DIE_WITH_PARENT"):  # mpirun passes them to remote ranks
        assert first.argv[first.argv.index(name) - 1] == "-x"


def test_launchers_give_the_ranks_the_grace_period_and_ranks_leave_quietly_after_a_preemption(tmp_path: Path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("exp-train-worker-0 slots=1\n")
    mpi = plan_launch(TRAIN, "torch", environ={"LANEX_MPI_HOSTFILE": str(hostfile),
                                               "LANEX_TERMINATION_GRACE_SECONDS": "300"})
    # Open MPI's daemons and torchrun's agent wait this long after passing SIGTERM on, before SIGKILL.
    assert mpi.env["OMPI_MCA_odls_base_sigkill_timeout"] == mpi.env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "300"
    # The launch reports a preemption (exit 75) from preempted.json; its ranks exit 0 so mpirun sees no failure.
    assert mpi.env["LANEX_PREEMPTED_EXIT_CODE"] == "0"
    assert mpi.argv[mpi.argv.index("LANEX_PREEMPTED_EXIT_CODE") - 1] == "-x"  # passed to remote ranks
    local = plan_launch(TRAIN, "torch", processes=2, environ={"LANEX_MPI_HOSTFILE": str(tmp_path / "none")})
    assert local.env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "180"  # no operator: the API's default

"""Who am I in the job, and how do workers talk: torch DDP (gloo/NCCL) or Horovod.

Rank discovery follows the launchers lanex supports, in order: torchrun/PyTorchJob
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`), horovodrun (`HOROVOD_RANK`, ...), mpirun/MPIJob
(`OMPI_COMM_WORLD_*`), PMI launchers (`PMI_RANK`, `PMI_SIZE`), else a single process.
torch's wheels have no MPI backend, so under mpirun the torch backend rendezvouses over TCP
at `MASTER_ADDR:MASTER_PORT`, or at the first host of the MPI hostfile.

The training loop talks to one small interface (`Distributed`) so that it never branches on
the backend: wrap the model and optimizer, sum tensors, broadcast objects, barrier.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

log = logging.getLogger(__name__)

DEFAULT_HOSTFILE = Path("/etc/mpi/hostfile")
DEFAULT_MASTER_PORT = 29500


class DistributedError(RuntimeError):
    """The job's distributed setup is wrong or a peer is gone; the message says which."""


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # torchrun | horovodrun | mpirun | pmi | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError as error:
        raise DistributedError(f"environment variable {name}={environ[name]!r} is not an integer") from error


def detect_world(environ: Optional[Mapping[str, str]] = None) -> WorldInfo:
    """Rank, world size and local rank from the launcher's environment."""
    env = os.environ if environ is None else environ
    schemes = (
        ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("horovodrun", "HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK"),
        ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
        ("pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    )
    for launcher, rank_var, size_var, local_var in schemes:
        if rank_var in env and size_var in env:
            rank, size = _int_env(env, rank_var), _int_env(env, size_var)
            local = _int_env(env, local_var) if local_var in env else rank
            if not 0 <= rank < size:
                raise DistributedError(f"{rank_var}={rank} is outside 0..{size - 1} ({size_var}={size})")
            return WorldInfo(rank=rank, world_size=size, local_rank=local, launcher=launcher)
    return WorldInfo(rank=0, world_size=1, local_rank=0, launcher="single")


def first_host(hostfile: Path) -> str:
    """The first host named in an MPI hostfile (`host slots=N` lines; comments ignored)."""
    try:
        lines = hostfile.read_text().splitlines()
    except FileNotFoundError as error:
        raise DistributedError(
            f"MASTER_ADDR is not set and the MPI hostfile {hostfile} does not exist; "
            "set MASTER_ADDR/MASTER_PORT or LANEX_MPI_HOSTFILE"
        ) from error
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            return line.split()[0].split(":")[0]
    raise DistributedError(f"MPI hostfile {hostfile} names no host")


def rendezvous_address(environ: Optional[Mapping[str, str]] = None) -> tuple[str, int]:
    """Where rank 0 listens: MASTER_ADDR/MASTER_PORT, else the hostfile's first host."""
    env = os.environ if environ is None else environ
    port = _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_MASTER_PORT
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"], port
    hostfile = Path(env.get("LANEX_MPI_HOSTFILE", str(DEFAULT_HOSTFILE)))
    return first_host(hostfile), port


def choose_backend(requested: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """'auto' means Horovod when horovodrun launched us, else torch."""
    env = os.environ if environ is None else environ
    if requested != "auto":
        return requested
    launched_by_horovodrun = "HOROVOD_RANK" in env or "HOROVOD_GLOO_RENDEZVOUS_ADDR" in env
    return "horovod" if launched_by_horovodrun else "torch"


class Distributed:
    """Single-process behaviour; subclasses override for real collectives."""

    backend = "none"

    def __init__(self, world: WorldInfo):
        self.world = world

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.world_size

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def wrap_model(self, model, device):
        return model

    def wrap_optimizer(self, optimizer, model):
        return optimizer

    def broadcast_initial_state(self, model, optimizer) -> None:
        """Make every rank start from rank 0's parameters and optimizer state."""

    def clip_and_step(self, optimizer, parameters, max_norm: float):
        """Clip the (already averaged) gradients to `max_norm`, then step; returns the norm before clipping."""
        import torch

        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        optimizer.step()
        return norm

    def all_reduce_sum(self, tensor):
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def gather_objects(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order (on every rank)."""
        return [obj]

    def barrier(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class TorchDistributed(Distributed):
    """torch.distributed: NCCL with one GPU per local rank, gloo on CPU; DDP for the model."""

    backend = "torch"

    def __init__(self, world: WorldInfo, use_cuda: bool, timeout_s: int, sync_batchnorm: bool):
        super().__init__(world)
        import torch.distributed as dist

        self._dist = dist
        self.sync_batchnorm = sync_batchnorm
        self.use_cuda = use_cuda
        if world.launcher == "torchrun":
            init_method = "env://"  # torchrun provides MASTER_ADDR/PORT
        else:
            address, port = rendezvous_address()
            init_method = f"tcp://{address}:{port}"
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=init_method,
            rank=world.rank,
            world_size=world.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )

    def wrap_model(self, model, device):
        import torch

        if self.sync_batchnorm and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif self.sync_batchnorm:
            log.warning("sync_batchnorm: torch's SyncBatchNorm needs CUDA; using per-rank BatchNorm on CPU")
        device_ids = [device.index] if device.type == "cuda" else None
        # DDP buckets gradients and overlaps their all-reduce with the rest of backward.
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=25)

    def all_reduce_sum(self, tensor):
        if self.use_cuda and tensor.device.type == "cpu":  # NCCL reduces device tensors only
            on_device = tensor.cuda()
            self._dist.all_reduce(on_device, op=self._dist.ReduceOp.SUM)
            return tensor.copy_(on_device)
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        holder = [obj]
        self._dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather_objects(self, obj: Any) -> list:
        gathered = [None] * self.world_size
        self._dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        self._dist.barrier()

    def shutdown(self) -> None:
        if self._dist.is_initialized():
            # Leave together: a rank that tears gloo down while a peer is still finishing (rank 0
            # writes results) can abort at exit ("terminate called without an active exception").
            try:
                self._dist.barrier()
            except RuntimeError as error:  # a peer is gone; nothing left to wait for
                log.warning("no final barrier with the other ranks: %s", error)
            self._dist.destroy_process_group()


class HorovodDistributed(Distributed):
    """Horovod: DistributedOptimizer averages gradients; state broadcast from rank 0."""

    backend = "horovod"

    def __init__(self, world: WorldInfo, fp16_allreduce: bool):
        try:
            import horovod.torch as hvd
        except ImportError as error:
            raise DistributedError(
                "backend 'horovod' needs Horovod with PyTorch support; build it with scripts/build_horovod.sh"
            ) from error
        hvd.init()
        self._hvd = hvd
        super().__init__(WorldInfo(hvd.rank(), hvd.size(), hvd.local_rank(), world.launcher))
        self.fp16_allreduce = fp16_allreduce

    def wrap_optimizer(self, optimizer, model):
        hvd = self._hvd
        compression = hvd.Compression.fp16 if self.fp16_allreduce else hvd.Compression.none
        return hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), compression=compression
        )

    def clip_and_step(self, optimizer, parameters, max_norm: float):
        import torch

        # Horovod averages gradients asynchronously: wait for them before clipping, then step
        # without a second synchronisation.
        optimizer.synchronize()
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        with optimizer.skip_synchronize():
            optimizer.step()
        return norm

    def broadcast_initial_state(self, model, optimizer) -> None:
        self._hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self._hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def all_reduce_sum(self, tensor):
        reduced = self._hvd.allreduce(tensor, op=self._hvd.Sum)
        tensor.copy_(reduced)
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        return self._hvd.broadcast_object(obj, root_rank=0)

    def gather_objects(self, obj: Any) -> list:
        return self._hvd.allgather_object(obj)

    def barrier(self) -> None:
        self._hvd.barrier()

    def shutdown(self) -> None:
        self._hvd.shutdown()


def init_distributed(backend: str, use_cuda: bool, timeout_s: int, sync_batchnorm: bool, fp16_allreduce: bool) -> Distributed:
    """Join the job described by the environment (or run alone)."""
    world = detect_world()
    chosen = choose_backend(backend)
    if chosen == "horovod":
        return HorovodDistributed(world, fp16_allreduce=fp16_allreduce)
    if world.world_size == 1:
        return Distributed(world)
    return TorchDistributed(world, use_cuda=use_cuda, timeout_s=timeout_s, sync_batchnorm=sync_batchnorm)

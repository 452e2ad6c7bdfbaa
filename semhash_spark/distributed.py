"""The only module that imports Horovod: ranks, allreduce, broadcast, and launching N processes.

Training code receives a :class:`Dist` and never imports horovod itself, so the math runs (and is tested)
without it, and another engine could stand in. One process (``np=1``) runs without Horovod at all; ``np>1``
starts real Horovod processes (gloo on CPU, NCCL through Horovod when CUDA is present).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


class Dist:
    """A single process: rank 0 of 1. The operations are identities."""

    rank = 0
    size = 1
    local_rank = 0

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def allreduce_mean_(self, tensors: list[torch.Tensor], name: str = "") -> None:
        return None

    def allreduce_scalars(self, values: list[float], name: str = "") -> list[float]:
        return list(values)

    def broadcast_(self, tensors: dict[str, torch.Tensor], root: int = 0, name: str = "") -> None:
        return None

    def broadcast_object(self, obj: Any, root: int = 0, name: str = "") -> Any:
        return obj

    def barrier(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


class HorovodDist(Dist):
    """Rank, size and collectives from ``horovod.torch`` (call after ``hvd.init()``)."""

    def __init__(self):
        import horovod.torch as hvd  # distributed: the only horovod import

        hvd.init()
        self._hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def allreduce_mean_(self, tensors: list[torch.Tensor], name: str = "") -> None:
        # distributed: average gradients/statistics over ranks, in place
        handles = [
            self._hvd.allreduce_async_(t, op=self._hvd.Average, name=f"{name}.{i}") for i, t in enumerate(tensors)
        ]
        for h in handles:
            self._hvd.synchronize(h)

    def allreduce_scalars(self, values: list[float], name: str = "") -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        return self._hvd.allreduce(t, op=self._hvd.Average, name=name or "scalars").tolist()

    def broadcast_(self, tensors: dict[str, torch.Tensor], root: int = 0, name: str = "") -> None:
        # distributed: every rank starts from rank 0's weights and optimiser state
        for key in sorted(tensors):
            self._hvd.broadcast_(tensors[key], root_rank=root, name=f"{name}.{key}")

    def broadcast_object(self, obj: Any, root: int = 0, name: str = "") -> Any:
        return self._hvd.broadcast_object(obj, root_rank=root, name=name or None)

    def barrier(self) -> None:
        self._hvd.barrier()

    def shutdown(self) -> None:
        self._hvd.shutdown()


def current(np_expected: int = 1) -> Dist:
    """The Dist of this process: Horovod when launched by horovodrun/horovod.run, else a single process."""
    under_horovod = any(k in os.environ for k in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "HOROVOD_SIZE"))
    if under_horovod or np_expected > 1:
        return HorovodDist()
    return Dist()


def device_for(dist: Dist, preference: str = "auto") -> torch.device:
    """CUDA (one GPU per local rank) when present and allowed, else CPU."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda was asked for but no CUDA device is visible")
    torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
    return torch.device("cuda", dist.local_rank % torch.cuda.device_count())


def run_processes(fn: Callable[..., Any], args: tuple, np: int, env: dict[str, str] | None = None) -> list[Any]:
    """Runs ``fn(*args)`` in ``np`` Horovod processes on this host (gloo) and returns every rank's result.

    A rank that dies makes the whole run fail with an error (Horovod tears the others down) instead of hanging.
    """
    import horovod  # distributed: launcher

    if np < 1:
        raise ValueError(f"--np must be at least 1, got {np}")
    saved = dict(os.environ)
    os.environ.update(env or {})
    os.environ.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", "120")
    log.info("starting %d Horovod processes (gloo)", np)
    try:
        # horovod.run ships fn with cloudpickle and starts the ranks with this environment.
        return horovod.run(fn, args=args, np=np, hosts=f"localhost:{np}", use_gloo=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)

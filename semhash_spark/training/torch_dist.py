"""The second engine: :class:`~semhash_spark.training.distributed.Dist` on ``torch.distributed``, started by Spark's
``TorchDistributor`` -- for clusters where Horovod cannot be built. Nothing here imports horovod.

``TorchDistributor(num_processes=N, local_mode=True)`` runs ``torchrun`` on the driver host, which starts N
processes with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set; each builds a :class:`TorchDist`
(gloo on CPU, NCCL when the device is CUDA) and runs the same rank function as the Horovod launchers. torchrun
stops the other ranks when one dies, and every collective has a timeout, so a dead rank fails the job.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Callable

import torch
import torch.distributed as tdist

from semhash_spark.training.distributed import Dist, RankFailed

log = logging.getLogger(__name__)

TORCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class TorchDist(Dist):
    """Rank, size and collectives from a ``torch.distributed`` process group (initialised here from the env)."""

    def __init__(self, backend: str | None = None, timeout_s: float = 120.0):
        missing = [k for k in TORCH_ENV if k not in os.environ]
        if missing:
            raise RankFailed(f"not started by torchrun/TorchDistributor: {', '.join(missing)} not set")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not tdist.is_initialized():
            tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        self.backend = backend
        self.rank, self.size = tdist.get_rank(), tdist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))

    def _on_backend(self, t: torch.Tensor) -> torch.Tensor:
        # NCCL reduces CUDA tensors only; gloo reduces host tensors (and CUDA ones through a copy it makes itself)
        if self.backend == "nccl" and not t.is_cuda:
            return t.cuda()
        return t

    def allreduce_mean_async_(self, tensors: list[torch.Tensor], name: str = "") -> Callable[[], None]:
        # distributed: average gradients/statistics over ranks, in place
        staged = [self._on_backend(t) for t in tensors]
        works = [tdist.all_reduce(s, op=tdist.ReduceOp.SUM, async_op=True) for s in staged]

        def wait() -> None:
            for w, t, s in zip(works, tensors, staged):
                w.wait()
                s.div_(self.size)
                if s is not t:
                    t.copy_(s)

        return wait

    def allreduce_scalars(self, values: list[float], name: str = "") -> list[float]:
        t = self._on_backend(torch.tensor(values, dtype=torch.float64))
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return (t / self.size).cpu().tolist()

    def broadcast_(self, tensors: dict[str, torch.Tensor], root: int = 0, name: str = "") -> None:
        # distributed: every rank starts from rank 0's weights and optimiser state
        for key in sorted(tensors):
            t = tensors[key]
            s = self._on_backend(t)
            tdist.broadcast(s, src=root)
            if s is not t:
                t.copy_(s)

    def broadcast_object(self, obj: Any, root: int = 0, name: str = "") -> Any:
        box = [obj]
        tdist.broadcast_object_list(box, src=root)
        return box[0]

    def allgather_object(self, obj: Any, name: str = "") -> list[Any]:
        out: list[Any] = [None] * self.size
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        tdist.barrier()

    def shutdown(self) -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def run_torch_distributor(fn: Callable[..., Any], args: tuple, np: int, use_gpu: bool = False) -> Any:
    """Runs ``fn(*args)`` in ``np`` local processes through ``TorchDistributor`` (needs an active SparkSession).

    Returns what rank 0 returned (every rank must return the same value: TorchDistributor keeps one). A rank that
    dies makes torchrun stop the others, raised here as :class:`RankFailed`.
    """
    from pyspark.ml.torch.distributor import TorchDistributor  # the launcher ships with pyspark

    if np < 1:
        raise ValueError(f"--np must be at least 1, got {np}")
    log.info(
        "starting %d torch.distributed processes through TorchDistributor (local mode, %s)",
        np,
        "GPU" if use_gpu else "CPU",
    )
    try:
        return TorchDistributor(num_processes=np, local_mode=True, use_gpu=use_gpu).run(fn, *args)
    except Exception as e:  # noqa: BLE001 - TorchDistributor raises RuntimeError with torchrun's output tail
        lines = [l for l in str(e).splitlines() if l.strip()]
        tail = " | ".join(lines[-6:]) or type(e).__name__
        raise RankFailed(f"a rank of the TorchDistributor job failed, so the job stopped: {tail}") from None

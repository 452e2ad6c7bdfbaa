"""The only module that imports Horovod: ranks, collectives, and the three ways of starting Horovod ranks.

Training code receives a :class:`Dist` and never imports horovod itself, so the math runs (and is tested)
without it, and another engine stands in: :mod:`semhash_spark.training.torch_dist` implements the same interface on
``torch.distributed`` for ``TorchDistributor``. One process (``np=1``) runs without Horovod at all.

Launchers (each runs the same rank function; see ``fit.train_model``):

- :func:`run_processes`: ``horovod.run`` starts N local processes (``semhash train --launcher local --np N``);
- :func:`run_horovodrun`: the ``horovodrun`` command starts N copies of a command line, each of which finds
  itself inside the job (:func:`inside_horovod`) and runs its rank (``--launcher horovodrun``);
- :func:`run_on_spark`: ``horovod.spark.run`` runs the ranks in Spark tasks on the executors (``--launcher spark``).

Collectives go over gloo on CPU; with CUDA tensors, over NCCL when this Horovod was built with it, else staged
through host memory so a CPU-only Horovod build still trains on a GPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger(__name__)

HOROVOD_ENV = ("HOROVOD_RANK", "HOROVOD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
POLL_SLEEP_S = 2e-4  # waiting on an asynchronous collective: poll, sleeping this long between
CPU_CYCLE_TIME_MS = "5"  # Horovod's negotiation cycle on CPU ranks (its own default, 1 ms, suits GPUs)
COLLECTIVE_TIMEOUT_S = "120"  # a rank that stops answering fails the others' collectives after this long


class RankFailed(RuntimeError):
    """A rank died or failed, so the whole distributed job stopped; the message names the launcher and cause."""


class Dist:
    """A single process: rank 0 of 1. The operations are identities."""

    rank = 0
    size = 1
    local_rank = 0

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def allreduce_mean_(self, tensors: list[torch.Tensor], name: str = "") -> None:
        self.allreduce_mean_async_(tensors, name)()

    def allreduce_mean_async_(self, tensors: list[torch.Tensor], name: str = "") -> Callable[[], None]:
        """Starts averaging ``tensors`` over the ranks, in place; returns the function that waits for it.

        Until that function returns the tensors must not be read or written; meanwhile the caller can work on
        anything else (the next batch), which is how training hides the collective's latency."""
        return _done

    def allreduce_scalars(self, values: list[float], name: str = "") -> list[float]:
        return list(values)

    def broadcast_(self, tensors: dict[str, torch.Tensor], root: int = 0, name: str = "") -> None:
        return None

    def broadcast_object(self, obj: Any, root: int = 0, name: str = "") -> Any:
        return obj

    def allgather_object(self, obj: Any, name: str = "") -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


class HorovodDist(Dist):
    """Rank, size and collectives from ``horovod.torch`` (``hvd.init()`` is called here)."""

    def __init__(self):
        import horovod.torch as hvd  # distributed: the only horovod import

        _tune_background_loop()
        hvd.init()
        self._hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        # CUDA tensors go to NCCL when Horovod has it; a CPU-only build reduces a host copy instead.
        self.nccl = bool(hvd.nccl_built())

    def _staged(self, t: torch.Tensor) -> torch.Tensor:
        return t.cpu() if (t.is_cuda and not self.nccl) else t

    def allreduce_mean_async_(self, tensors: list[torch.Tensor], name: str = "") -> Callable[[], None]:
        # distributed: one grouped allreduce (Horovod fuses the group into one gloo or NCCL collective)
        staged = [self._staged(t) for t in tensors]
        handle = self._hvd.grouped_allreduce_async_(staged, op=self._hvd.Average, name=name or None)

        def wait() -> None:
            self._wait(handle)
            for t, s in zip(tensors, staged):
                if s is not t:
                    t.copy_(s)

        return wait

    def _wait(self, handle: int) -> None:
        # hvd.synchronize spin-waits in this thread; on a host with no spare core the spin takes the CPU from
        # Horovod's background thread doing the reduction, so poll with a short sleep instead
        while not self._hvd.poll(handle):
            time.sleep(POLL_SLEEP_S)
        self._hvd.synchronize(handle)

    def allreduce_scalars(self, values: list[float], name: str = "") -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        return self._hvd.allreduce(t, op=self._hvd.Average, name=name or "scalars").tolist()

    def broadcast_(self, tensors: dict[str, torch.Tensor], root: int = 0, name: str = "") -> None:
        # distributed: every rank starts from rank 0's weights and optimiser state
        staged = {f"{name}.{k}": self._staged(t) for k, t in tensors.items()}
        self._hvd.broadcast_parameters(staged, root_rank=root)
        for k, t in tensors.items():
            s = staged[f"{name}.{k}"]
            if s is not t:
                t.copy_(s)

    def broadcast_object(self, obj: Any, root: int = 0, name: str = "") -> Any:
        return self._hvd.broadcast_object(obj, root_rank=root, name=name or None)

    def allgather_object(self, obj: Any, name: str = "") -> list[Any]:
        return self._hvd.allgather_object(obj, name=name or None)

    def barrier(self) -> None:
        self._hvd.barrier()

    def shutdown(self) -> None:
        self._hvd.shutdown()


def _done() -> None:
    return None


def _tune_background_loop() -> None:
    """Settles the Horovod background loop's settings in this rank's environment before ``hvd.init()`` reads them.

    - ``horovod.run`` 0.28.1 exports ``HOROVOD_CYCLE_TIME`` and ``HOROVOD_CACHE_CAPACITY`` as the string
      ``"(None,)"`` (two defaults in its ``_HorovodArgs`` are 1-tuples), which the C++ side reads as 0: a
      negotiation cycle that never sleeps and no response cache. Such values are dropped here.
    - Unless the user set ``HOROVOD_CYCLE_TIME``, a rank without a GPU negotiates every ``CPU_CYCLE_TIME_MS``
      (Horovod's default before 0.21) instead of every 1 ms: each cycle is a small gloo collective, and on a
      host whose cores all train, 1000 of them a second take CPU time the training needs.
    """
    for key in ("HOROVOD_CYCLE_TIME", "HOROVOD_CACHE_CAPACITY"):
        if os.environ.get(key, "").strip() in ("(None,)", "None", ""):
            os.environ.pop(key, None)
    if "HOROVOD_CYCLE_TIME" not in os.environ and not torch.cuda.is_available():
        os.environ["HOROVOD_CYCLE_TIME"] = CPU_CYCLE_TIME_MS


def inside_horovod() -> bool:
    """Whether this process is a rank started by horovodrun / horovod.run / mpirun."""
    return any(k in os.environ for k in HOROVOD_ENV)


def launched_rank() -> int:
    """This process's rank as its launcher set it in the environment (0 outside a job)."""
    for k in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if k in os.environ:
            return int(os.environ[k])
    return 0


def current(np_expected: int = 1) -> Dist:
    """The Dist of this process: Horovod when launched by horovodrun/horovod.run, else a single process."""
    if inside_horovod() or np_expected > 1:
        dist = HorovodDist()
        if np_expected > 1 and dist.size != np_expected:
            raise RankFailed(f"expected {np_expected} Horovod ranks, this job has {dist.size}")
        return dist
    return Dist()


def device_for(dist: Dist, preference: str = "auto") -> torch.device:
    """CUDA (one GPU per local rank) when present and allowed, else CPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda was asked for but no CUDA device is visible")
    index = dist.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    if isinstance(dist, HorovodDist) and dist.size > 1 and not dist.nccl:
        log.warning("Horovod was built without NCCL: collectives of CUDA tensors go through host memory (gloo)")
    return torch.device("cuda", index)


def _job_env(env: dict[str, str] | None) -> dict[str, str]:
    out = {"HOROVOD_GLOO_TIMEOUT_SECONDS": os.environ.get("HOROVOD_GLOO_TIMEOUT_SECONDS", COLLECTIVE_TIMEOUT_S)}
    out.update(env or {})
    return out


def _failed(launcher: str, e: BaseException) -> RankFailed:
    msg = " ".join(str(e).split()) or type(e).__name__
    return RankFailed(f"a rank of the {launcher} job failed, so the job stopped: {msg}")


def run_processes(fn: Callable[..., Any], args: tuple, np: int, env: dict[str, str] | None = None) -> list[Any]:
    """Runs ``fn(*args)`` in ``np`` Horovod processes on this host (gloo) and returns every rank's result.

    A rank that dies makes the whole run fail with :class:`RankFailed` (Horovod tears the others down) instead of
    hanging.
    """
    import horovod  # distributed: launcher

    if np < 1:
        raise ValueError(f"--np must be at least 1, got {np}")
    saved = dict(os.environ)
    os.environ.update(_job_env(env))
    log.info("starting %d Horovod processes (gloo)", np)
    try:
        # horovod.run ships fn with cloudpickle and starts the ranks with this environment.
        return horovod.run(fn, args=args, np=np, hosts=f"localhost:{np}", use_gloo=True)
    except RuntimeError as e:
        raise _failed("horovod.run", e) from None
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_horovodrun(
    command: Sequence[str], np: int, hosts: str | None = None, env: dict[str, str] | None = None
) -> None:
    """Runs ``horovodrun -np N -H hosts --gloo COMMAND`` and waits; every rank runs ``command``.

    Raises :class:`RankFailed` when horovodrun exits non-zero (it stops every rank once one fails).
    """
    beside = os.path.join(os.path.dirname(sys.executable), "horovodrun")  # the venv's, when not on PATH
    exe = beside if os.path.exists(beside) else shutil.which("horovodrun")
    if not exe:
        raise RankFailed("horovodrun not found on PATH; install Horovod or use --launcher local")
    if np < 1:
        raise ValueError(f"--np must be at least 1, got {np}")
    cmd = [exe, "-np", str(np), "-H", hosts or f"localhost:{np}", "--gloo", *command]
    log.info("running %s", " ".join(cmd))
    rc = subprocess.run(cmd, env={**os.environ, **_job_env(env)}).returncode
    if rc != 0:
        raise RankFailed(f"horovodrun exited with status {rc}: a rank failed or was killed (its output is above)")


def run_on_spark(fn: Callable[..., Any], args: tuple, np: int, env: dict[str, str] | None = None) -> list[Any]:
    """Runs ``fn(*args)`` as ``np`` Horovod ranks inside Spark tasks (``horovod.spark.run``, gloo).

    Needs an active SparkSession with at least ``np`` task slots; ``fn`` is shipped with cloudpickle and should
    import what it needs itself. Returns every rank's result in rank order.
    """
    import horovod.spark  # distributed: launcher on Spark executors

    if np < 1:
        raise ValueError(f"--np must be at least 1, got {np}")
    log.info("starting %d Horovod ranks in Spark tasks (horovod.spark.run, gloo)", np)
    try:
        # The ranks keep their executor's environment plus these settings; the executors' Python runs them.
        return horovod.spark.run(
            fn,
            args=args,
            num_proc=np,
            use_gloo=True,
            env=_job_env(env),
            verbose=1,
            executable=os.environ.get("PYSPARK_PYTHON") or None,
            start_timeout=int(os.environ.get("HOROVOD_SPARK_START_TIMEOUT", "300")),
        )
    except Exception as e:  # noqa: BLE001 - horovod.spark raises plain Exception and Spark's Py4J errors
        raise _failed("horovod.spark.run", e) from None

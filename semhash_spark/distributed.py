"""The only module that imports Horovod: ranks, collectives, and the three ways of starting Horovod ranks.

Training code receives a :class:`Dist` and never imports horovod itself, so the math runs (and is tested)
without it, and another engine stands in: :mod:`semhash_spark.torch_dist` implements the same interface on
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

from . import local_reduce
from .local_reduce import LocalReducer

log = logging.getLogger(__name__)

HOROVOD_ENV = ("HOROVOD_RANK", "HOROVOD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
POLL_SLEEP_S = 2e-4                # waiting on an asynchronous collective: poll, sleeping this long between
CPU_CYCLE_TIME_MS = "5"            # Horovod's negotiation cycle on CPU ranks (its own default, 1 ms, suits GPUs)
SHM_CYCLE_TIME_MS = "50"           # ... on CPU ranks of one host that train through shared memory (Horovod idles)
COLLECTIVE_TIMEOUT_S = "120"       # a rank that stops answering fails the others' collectives after this long


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

    def use_shared_memory(self, slot_mb: float = 16) -> bool:
        """Asks to average CPU tensors through shared memory when all ranks share a host; whether it is on."""
        return False

    def allreduce_mean_(self, tensors: list[torch.Tensor], name: str = "") -> None:
        self.allreduce_mean_async_(tensors, name)()

    def allreduce_mean_async_(self, tensors: list[torch.Tensor], name: str = "") -> Callable[[], None]:
        """Starts averaging ``tensors`` over the ranks, in place; returns the function that waits for it.

        Until that function returns the tensors must not be read or written; meanwhile the caller can work on
        anything else (the next batch), which is how training hides the collective's latency."""
        return _done

    def allreduce_mean_async(self, tensors: list[torch.Tensor], name: str = "") -> Callable[[], list[torch.Tensor]]:
        """Like :meth:`allreduce_mean_async_`, but the waiting function returns the averages: the tensors
        themselves, averaged in place, or (ranks averaging through shared memory) read-only views of the shared
        result, valid until this rank's next collective, with the tensors left as they were. For values read once
        before the next step, such as gradients by an optimiser step: it saves copying them back."""
        wait = self.allreduce_mean_async_(tensors, name)

        def averages() -> list[torch.Tensor]:
            wait()
            return list(tensors)

        return averages

    def scratch(self, like: torch.Tensor) -> torch.Tensor | None:
        """A buffer shaped like ``like`` to compute a tensor into that the next :meth:`allreduce_mean_async` then
        averages without copying it (a view of this rank's shared-memory slot, for float32 CPU tensors), or None
        (allocate as usual: one rank, the network path, a CUDA or float64 tensor, no room left in the slot).
        Its average is what that call's waiting function returns; the buffer itself is reused by the next submits,
        so it is not for :meth:`allreduce_mean_async_`."""
        return None

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

    def __init__(self, local_allreduce: str = "network"):
        import horovod.torch as hvd  # distributed: the only horovod import

        self._idle_cycle = _tune_background_loop(local_allreduce == "shm")
        hvd.init()
        self._hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        # CUDA tensors go to NCCL when Horovod has it; a CPU-only build reduces a host copy instead.
        self.nccl = bool(hvd.nccl_built())
        self._local: LocalReducer | None = None

    def use_shared_memory(self, slot_mb: float = local_reduce.DEFAULT_SLOT_MB) -> bool:
        """Averages CPU float32 tensors through shared memory from now on, when every rank is on this host.

        Collective: every rank calls it. Returns whether the shared-memory path is on (on every rank alike); when
        the ranks span hosts, or ``/dev/shm`` cannot hold the segment, everything stays on Horovod.
        """
        if self.size == 1 or self._hvd.local_size() != self.size or self._local is not None:
            return self._local is not None
        timeout = float(os.environ.get("HOROVOD_GLOO_TIMEOUT_SECONDS", COLLECTIVE_TIMEOUT_S))
        self._local = local_reduce.open_group(
            self.rank, self.size,
            lambda obj: self._hvd.broadcast_object(obj, root_rank=0, name="shm.setup"),
            lambda obj: self._hvd.allgather_object(obj, name="shm.setup"),
            slot_mb=slot_mb, timeout_s=timeout)
        if self._local is not None and self.rank == 0:
            log.info("%d ranks on this host average through shared memory (%.0f MiB per rank)", self.size, slot_mb)
        if self._local is None and self._idle_cycle and self.rank == 0:
            log.warning("shared memory was planned but is unavailable: Horovod carries the gradients with a %s ms "
                        "negotiation cycle meant for shared memory, which slows every step; set "
                        "HOROVOD_CYCLE_TIME=%s or train.local_allreduce=network", SHM_CYCLE_TIME_MS, CPU_CYCLE_TIME_MS)
        return self._local is not None

    def _staged(self, t: torch.Tensor) -> torch.Tensor:
        return t.cpu() if (t.is_cuda and not self.nccl) else t

    def allreduce_mean_async_(self, tensors: list[torch.Tensor], name: str = "") -> Callable[[], None]:
        averages = self._allreduce_async(tensors, name, views=False)

        def wait() -> None:
            averages()

        return wait

    def allreduce_mean_async(self, tensors: list[torch.Tensor], name: str = "") -> Callable[[], list[torch.Tensor]]:
        return self._allreduce_async(tensors, name, views=True)

    def scratch(self, like: torch.Tensor) -> torch.Tensor | None:
        if self._local is None or not local_reduce.supported(like):
            return None
        buf = self._local.scratch(like.numel())
        return None if buf is None else buf.view(like.shape)

    def _allreduce_async(self, tensors: list[torch.Tensor], name: str, views: bool
                         ) -> Callable[[], list[torch.Tensor]]:
        # distributed: average gradients/statistics over ranks; Horovod's background thread fuses the tensors
        # submitted in one negotiation cycle into one gloo (or NCCL) allreduce
        local = self._local
        records: list[Any] = list(tensors)   # what each average will be read from
        if local is not None and any(local_reduce.supported(t) for t in tensors):
            # one host: float32 CPU tensors go to shared memory (averaged at the first wait), the rest to Horovod
            for i, t in enumerate(tensors):
                if local_reduce.supported(t):
                    records[i] = local.submit(t, view=views)
            network = [t for t in tensors if not local_reduce.supported(t)]
        else:
            local, network = None, list(tensors)
        staged = [self._staged(t) for t in network]
        handles = [
            self._hvd.allreduce_async_(s, op=self._hvd.Average, name=f"{name}.{i}") for i, s in enumerate(staged)
        ]

        def wait() -> list[torch.Tensor]:
            if local is not None:
                local.flush(views=views)
            for h in handles:
                self._wait(h)
            for t, s in zip(network, staged):
                if s is not t:
                    t.copy_(s)
            return [r if isinstance(r, torch.Tensor) else r.value for r in records]

        return wait

    def _wait(self, handle: int) -> None:
        # hvd.synchronize spin-waits in this thread; on a host with no spare core (2 ranks on 2 cores) the spin
        # takes the CPU from the background thread doing the reduction and from the other rank (measured: 9 ms of
        # CPU per 4 MB allreduce, 2.5 ms when polling with a short sleep: about what torch.distributed gloo costs).
        while not self._hvd.poll(handle):
            time.sleep(POLL_SLEEP_S)
        self._hvd.synchronize(handle)

    def allreduce_scalars(self, values: list[float], name: str = "") -> list[float]:
        if self._local is not None:   # one host: per-epoch metrics never wait on Horovod's (idle) cycle
            return self._local.allreduce_scalars(values)
        t = torch.tensor(values, dtype=torch.float64)
        return self._hvd.allreduce(t, op=self._hvd.Average, name=name or "scalars").tolist()

    def broadcast_(self, tensors: dict[str, torch.Tensor], root: int = 0, name: str = "") -> None:
        # distributed: every rank starts from rank 0's weights and optimiser state
        if self._local is not None:
            self._local.broadcast_([tensors[k] for k in sorted(tensors) if local_reduce.supported(tensors[k])], root)
            tensors = {k: t for k, t in tensors.items() if not local_reduce.supported(t)}
        for key in sorted(tensors):
            t = tensors[key]
            s = self._staged(t)
            self._hvd.broadcast_(s, root_rank=root, name=f"{name}.{key}")
            if s is not t:
                t.copy_(s)

    def broadcast_object(self, obj: Any, root: int = 0, name: str = "") -> Any:
        if self._local is not None:
            fits, value = self._local.broadcast_object(obj, root)
            if fits:
                return value
        return self._hvd.broadcast_object(obj, root_rank=root, name=name or None)

    def allgather_object(self, obj: Any, name: str = "") -> list[Any]:
        return self._hvd.allgather_object(obj, name=name or None)

    def barrier(self) -> None:
        if self._local is not None:
            self._local.barrier()
        else:
            self._hvd.barrier()

    def shutdown(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        self._hvd.shutdown()


def _done() -> None:
    return None


def _tune_background_loop(shared_memory: bool = False) -> bool:
    """Settles the Horovod background loop's settings in this rank's environment before ``hvd.init()`` reads them;
    whether it chose the long cycle for shared memory.

    - ``horovod.run`` 0.28.1 exports ``HOROVOD_CYCLE_TIME`` and ``HOROVOD_CACHE_CAPACITY`` as the string
      ``"(None,)"`` (two defaults in its ``_HorovodArgs`` are 1-tuples), which the C++ side reads as 0: a
      negotiation cycle that never sleeps and no response cache. Such values are dropped here.
    - Unless the user set ``HOROVOD_CYCLE_TIME``, a rank without a GPU negotiates every ``CPU_CYCLE_TIME_MS``
      (Horovod's default before 0.21) instead of every 1 ms: each cycle is a small gloo collective, and on a
      host whose cores all train, 1000 of them a second took 15-25 ms of CPU per 75 ms CD step (2 ranks, 2
      cores), against about 2 ms at 5 ms. The cost is up to one cycle of latency per collective.
    - When every rank is on this host (the launcher's ``HOROVOD_LOCAL_SIZE`` equals ``HOROVOD_SIZE``) and
      ``train.local_allreduce=shm``, gradients, metrics, decisions and weights all go through shared memory and
      Horovod is left with a handful of setup collectives, so it negotiates every ``SHM_CYCLE_TIME_MS``: at 5 ms its
      idle cycles (a small gloo collective each, 200 a second) took 1.5-2.5 ms of CPU per 2-rank fine-tuning step
      per rank on 2 cores, against 0.2-0.7 ms at 50 ms (``benchmarks/allreduce_step.py``, docs/benchmarks.md).
    """
    for key in ("HOROVOD_CYCLE_TIME", "HOROVOD_CACHE_CAPACITY"):
        if os.environ.get(key, "").strip() in ("(None,)", "None", ""):
            os.environ.pop(key, None)
    if "HOROVOD_CYCLE_TIME" in os.environ or torch.cuda.is_available():
        return False
    size = os.environ.get("HOROVOD_SIZE", "")
    idle = shared_memory and size.isdigit() and int(size) > 1 and os.environ.get("HOROVOD_LOCAL_SIZE") == size
    os.environ["HOROVOD_CYCLE_TIME"] = SHM_CYCLE_TIME_MS if idle else CPU_CYCLE_TIME_MS
    return idle


LOCAL_ALLREDUCE = ("shm", "network")


def configure_local_allreduce(dist: Dist, mode: str, slot_mb: float) -> bool:
    """Applies ``train.local_allreduce`` on every rank (collective); whether shared memory is in use."""
    if mode not in LOCAL_ALLREDUCE:
        raise ValueError(f"train.local_allreduce must be one of {LOCAL_ALLREDUCE}, got {mode!r}")
    if slot_mb <= 0:
        raise ValueError(f"train.shm_slot_mb must be positive, got {slot_mb}")
    return mode == "shm" and dist.use_shared_memory(slot_mb)


def inside_horovod() -> bool:
    """Whether this process is a rank started by horovodrun / horovod.run / mpirun."""
    return any(k in os.environ for k in HOROVOD_ENV)


def launched_rank() -> int:
    """This process's rank as its launcher set it in the environment (0 outside a job)."""
    for k in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if k in os.environ:
            return int(os.environ[k])
    return 0


def current(np_expected: int = 1, local_allreduce: str = "network") -> Dist:
    """The Dist of this process: Horovod when launched by horovodrun/horovod.run, else a single process.

    ``local_allreduce`` is ``train.local_allreduce``: with ``shm`` Horovod's negotiation loop is set up to idle
    (see :func:`_tune_background_loop`); :func:`configure_local_allreduce` then opens the shared-memory group."""
    if inside_horovod() or np_expected > 1:
        dist = HorovodDist(local_allreduce)
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


def run_horovodrun(command: Sequence[str], np: int, hosts: str | None = None,
                   env: dict[str, str] | None = None) -> None:
    """Runs ``horovodrun -np N -H hosts --gloo COMMAND`` and waits; every rank runs ``command``.

    Raises :class:`RankFailed` when horovodrun exits non-zero (it stops every rank once one fails).
    """
    beside = os.path.join(os.path.dirname(sys.executable), "horovodrun")   # the venv's, when not on PATH
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
        return horovod.spark.run(fn, args=args, num_proc=np, use_gloo=True, env=_job_env(env), verbose=1,
                                 executable=os.environ.get("PYSPARK_PYTHON") or None,
                                 start_timeout=int(os.environ.get("HOROVOD_SPARK_START_TIMEOUT", "300")))
    except Exception as e:  # noqa: BLE001 - horovod.spark raises plain Exception and Spark's Py4J errors
        raise _failed("horovod.spark.run", e) from None

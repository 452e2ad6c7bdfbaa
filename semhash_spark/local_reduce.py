"""Averaging float32 tensors among the ranks of one host through shared memory.

Ranks on one host that average their gradients over Horovod's gloo data plane pay for it in CPU that training
needs: a 10 MB fine-tuning gradient crosses loopback TCP (a kernel copy each way), is copied into and out of
Horovod's fusion buffer and summed, which measured about 45 ms of CPU per rank per 100 ms step with 2 ranks on 2
cores. Here each rank copies its tensors into its own slot of one shared segment, sums one chunk of every slot
into a shared result, and copies the result back: three passes over memory, no sockets for the data (~7 ms).

Protocol (``N`` ranks, the same sequence of calls on every rank, which data-parallel training guarantees):

1. ``submit`` copies a tensor into this rank's slot at the next free offset (a tensor larger than the space left
   is split; when the slot is full the pending tensors are reduced first, so any size goes through). A tensor
   computed straight into the slot (:meth:`LocalReducer.scratch`, e.g. a CD weight gradient written by its
   matrix product) is not copied at all;
2. ``flush`` (the first ``wait`` after submits): barrier "written"; rank ``r`` sums elements
   ``[r*L/N, (r+1)*L/N)`` of the ``L`` pending ones over all slots into the result and scales by ``1/N``;
   barrier "reduced"; every rank copies the result back into its tensors -- or, for a tensor submitted whole
   with ``view=True`` and reduced by the flush its caller asked for, hands out the result region itself
   (:meth:`Submitted.value`), which the caller reads before its next collective (an optimiser step), so the
   average is never copied.

A slot is only written again after the next "written" barrier, which no rank passes before every rank has copied the
previous result out (or, for results handed out as views, before every rank has made its next submit, which it does
after reading them), so one result region is enough. Barriers are 16-byte datagrams over abstract Unix sockets (a
blocking receive, no spinning; the system calls order the shared-memory stores). Waiting checks that the other
ranks' processes are alive every second and raises :class:`LocalReduceFailed` when one is gone, so a dead rank fails
the others instead of hanging them. The segment is a file under ``/dev/shm`` reserved with ``posix_fallocate`` (a
full ``/dev/shm`` fails at setup, not with SIGBUS mid-run) and unlinked as soon as every rank has mapped it, so
nothing is left behind by a crash.

The few collectives outside the steps go through the same slots, so that a rank needs no network collective while it
trains (and Horovod's negotiation loop can idle, :mod:`semhash_spark.distributed`): per-epoch metrics
(:meth:`LocalReducer.allreduce_scalars`, float64, summed in rank order so every rank gets the same bits), decisions
and small objects (:meth:`LocalReducer.broadcast_object`, pickled into the root's slot; one too large for a slot is
reported so the caller sends it over the network instead), weights (:meth:`LocalReducer.broadcast_`) and
:meth:`LocalReducer.barrier`. Each of them first averages any pending tensors and, when it reads a slot, ends with a
"read" barrier, so the slots are free again when it returns. Their barriers wait without a deadline (a rank may
validate or checkpoint for minutes while the others wait), checking that the peers are alive and logging every
minute.

Linux only (abstract sockets, ``/dev/shm``); :meth:`LocalReducer.open` returns None where it cannot work and the
caller keeps its network collectives.
"""
from __future__ import annotations

import logging
import mmap
import os
import pickle
import socket
import struct
import time
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
DEFAULT_SLOT_MB = 16                 # per rank; (N + 1) slots in all: 48 MiB for 2 ranks (Docker's /dev/shm: 64)
ALIVE_CHECK_S = 1.0                  # a waiting rank checks its peers' processes this often
_MSG = struct.Struct("<qq")          # (phase, sequence number)
_WRITTEN, _REDUCED, _HELLO, _POSTED, _READ = 1, 2, 3, 4, 5
_HEADER = struct.Struct("<q")        # a broadcast object's length in the root's slot (-1: too large for a slot)
STALL_LOG_S = 60.0                   # a rank waiting without a deadline says so this often


class LocalReduceFailed(RuntimeError):
    """Another rank of the shared-memory group died or sent out of order: the collective cannot complete."""


class Submitted:
    """One tensor given to :meth:`LocalReducer.submit`; after the flush that reduced it, :attr:`value` holds its
    average: the tensor itself (averaged in place), or a read-only view of the shared result region that is valid
    until this rank's next collective."""

    __slots__ = ("tensor", "view", "value", "in_slot")

    def __init__(self, tensor: torch.Tensor, view: bool):
        self.tensor, self.view = tensor, view
        self.value: torch.Tensor | None = None
        self.in_slot = False      # computed in the slot (scratch): its average cannot go back there


class LocalReducer:
    """One rank's end of a shared-memory averaging group (build with :meth:`open` on every rank at once)."""

    def __init__(self, rank: int, size: int, token: str, pids: list[int], mem: mmap.mmap, slot_floats: int,
                 sock: socket.socket, timeout_s: float):
        self.rank, self.size, self.token, self.pids = rank, size, token, pids
        self._mem, self.slot_floats, self._sock, self.timeout_s = mem, slot_floats, sock, timeout_s
        every = torch.frombuffer(memoryview(mem), dtype=torch.float32)
        self._slots = [every[k * slot_floats:(k + 1) * slot_floats] for k in range(size)]
        self._result = every[size * slot_floats:(size + 1) * slot_floats]
        self._pending: list[tuple[Submitted, int, int, int]] = []   # (record, start, slot offset, length)
        self._cursor = 0
        self._seq = 0
        self._early: dict[tuple[int, int], int] = {}   # barrier messages that arrived before their barrier
        self.bytes_reduced = 0
        self.wait_s = 0.0      # time spent in barriers (waiting for the other ranks), for benchmarks and logs

    # --- setup -----------------------------------------------------------------------------------------------
    @staticmethod
    def segment_bytes(size: int, slot_floats: int) -> int:
        return (size + 1) * slot_floats * 4

    @classmethod
    def create_segment(cls, token: str, size: int, slot_floats: int) -> str:
        """Rank 0: creates and reserves the segment file; raises OSError when ``/dev/shm`` cannot hold it."""
        path = os.path.join(SHM_DIR, f"semhash-reduce-{token}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, cls.segment_bytes(size, slot_floats))
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return path

    @classmethod
    def attach(cls, rank: int, size: int, token: str, pids: list[int], slot_floats: int,
               timeout_s: float) -> "LocalReducer":
        """Maps the segment rank 0 created and binds this rank's socket (every rank, after create_segment)."""
        path = os.path.join(SHM_DIR, f"semhash-reduce-{token}")
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size != cls.segment_bytes(size, slot_floats):
                raise OSError(f"{path} has the wrong size")
            mem = mmap.mmap(fd, cls.segment_bytes(size, slot_floats))
        finally:
            os.close(fd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(_address(token, rank))
        return cls(rank, size, token, pids, mem, slot_floats, sock, timeout_s)

    def handshake(self) -> None:
        """Every rank greets every other one and waits for all greetings: the sockets work both ways."""
        self._barrier(_HELLO)

    def close(self) -> None:
        self._pending.clear()
        self._slots = []
        self._result = None
        try:
            self._sock.close()
        finally:
            try:
                self._mem.close()
            except BufferError:   # a tensor view still refers to it; the mapping goes with the process
                pass

    # --- collectives -----------------------------------------------------------------------------------------
    def scratch(self, numel: int) -> torch.Tensor | None:
        """Where the next submitted tensor of ``numel`` floats can be computed in place: a view of this rank's slot
        at the next free offset, which :meth:`submit` then takes without a copy. None when it does not fit the
        space left (the caller allocates as usual). Its average is only in the submit's record (``.value``), never
        in the buffer, which the next submits overwrite."""
        if numel > self.slot_floats - self._cursor:
            return None
        return self._slots[self.rank][self._cursor:self._cursor + numel]

    def submit(self, t: torch.Tensor, view: bool = False) -> Submitted:
        """Queues ``t`` (float32, CPU, contiguous) to be averaged over the ranks at the next flush.

        The average replaces ``t`` in place, unless ``view``: then the flush that a wait asks for (not one forced by
        a full slot) leaves ``t`` alone and hands out the shared result region (``.value`` of the returned record),
        saving a copy of every tensor that is only read before the next collective."""
        flat = t.view(-1)
        rec = Submitted(t, view)
        pos, n = 0, flat.numel()
        while pos < n:
            take = min(n - pos, self.slot_floats - self._cursor)
            if take == 0:
                self.flush()
                continue
            target = self._slots[self.rank][self._cursor:self._cursor + take]
            if target.data_ptr() == flat[pos:].data_ptr():   # computed in place (scratch): nothing to copy
                rec.in_slot = True
            else:
                target.copy_(flat[pos:pos + take])
            self._pending.append((rec, pos, self._cursor, take))
            self._cursor += take
            pos += take
        if n == 0:
            rec.value = t
        return rec

    def flush(self, views: bool = False) -> None:
        """Averages every pending tensor over the ranks (a no-op with nothing pending): in place, or, with
        ``views``, as result views for the tensors submitted whole with ``view=True``."""
        if not self._pending:
            return
        length = self._cursor
        self._barrier(_WRITTEN)
        lo, hi = self.rank * length // self.size, (self.rank + 1) * length // self.size
        if hi > lo:
            out = self._result[lo:hi]
            torch.add(self._slots[0][lo:hi], self._slots[1][lo:hi], out=out)
            for k in range(2, self.size):
                out.add_(self._slots[k][lo:hi])
            out.mul_(1.0 / self.size)
        self._barrier(_REDUCED)
        for rec, start, offset, take in self._pending:
            flat = rec.tensor.view(-1)
            if views and rec.view and take == flat.numel():
                rec.value = self._result[offset:offset + take].view(rec.tensor.shape)
            elif rec.in_slot:   # (whole: scratch space always fits) the slot is written again by the next submits
                rec.value = self._result[offset:offset + take].clone().view(rec.tensor.shape)
            else:
                flat[start:start + take].copy_(self._result[offset:offset + take])
                rec.value = rec.tensor
        self.bytes_reduced += 4 * length
        self._pending.clear()
        self._cursor = 0

    # --- small collectives: metrics, decisions, weights ----------------------------------------------------------
    def allreduce_scalars(self, values: list[float]) -> list[float]:
        """The mean over the ranks of ``values`` (float64), identical on every rank."""
        self.flush()
        n = len(values)
        if 2 * n > self.slot_floats:
            raise ValueError(f"{n} scalars do not fit a {self.slot_floats}-float slot")
        self._f64(self.rank, n)[:] = np.asarray(values, dtype=np.float64)
        self._barrier(_POSTED, patient=True)
        total = self._f64(0, n).copy()
        for k in range(1, self.size):
            total += self._f64(k, n)
        self._barrier(_READ, patient=True)
        return (total * (1.0 / self.size)).tolist()

    def broadcast_object(self, obj: Any, root: int = 0) -> tuple[bool, Any]:
        """``(True, root's obj)`` on every rank, or ``(False, None)`` on every rank when its pickle does not fit
        a slot (the caller then sends it another way)."""
        self.flush()
        base = 4 * self.slot_floats * root
        if self.rank == root:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            fits = len(data) <= 4 * self.slot_floats - _HEADER.size
            _HEADER.pack_into(self._mem, base, len(data) if fits else -1)
            if fits:
                self._mem[base + _HEADER.size:base + _HEADER.size + len(data)] = data
        self._barrier(_POSTED, patient=True)
        (length,) = _HEADER.unpack_from(self._mem, base)
        if self.rank == root or length < 0:
            out = obj if length >= 0 else None
        else:
            out = pickle.loads(self._mem[base + _HEADER.size:base + _HEADER.size + length])
        self._barrier(_READ, patient=True)
        return length >= 0, out

    def broadcast_(self, tensors: list[torch.Tensor], root: int = 0) -> None:
        """Replaces ``tensors`` (float32, CPU, contiguous; the same shapes on every rank) by the root's, in place;
        any total size goes through, a slot at a time."""
        self.flush()
        slot = self._slots[root]
        pending: list[tuple[torch.Tensor, int, int, int]] = []
        cursor = 0

        def exchange() -> None:
            self._barrier(_POSTED, patient=True)
            if self.rank != root:
                for flat, start, offset, take in pending:
                    flat[start:start + take].copy_(slot[offset:offset + take])
            self._barrier(_READ, patient=True)
            pending.clear()

        for t in tensors:
            flat = t.view(-1)
            pos, n = 0, flat.numel()
            while pos < n:
                take = min(n - pos, self.slot_floats - cursor)
                if take == 0:
                    exchange()
                    cursor = 0
                    continue
                if self.rank == root:
                    slot[cursor:cursor + take].copy_(flat[pos:pos + take])
                pending.append((flat, pos, cursor, take))
                cursor += take
                pos += take
        if pending:
            exchange()

    def barrier(self) -> None:
        self.flush()
        self._barrier(_POSTED, patient=True)

    def _f64(self, rank: int, n: int) -> np.ndarray:
        return np.frombuffer(self._mem, dtype=np.float64, count=n, offset=4 * self.slot_floats * rank)

    # --- barriers --------------------------------------------------------------------------------------------
    def _barrier(self, phase: int, patient: bool = False) -> None:
        """Waits until every other rank reached this barrier: up to ``timeout_s`` (steps), or for as long as the
        peers are alive when ``patient`` (collectives that wait on another rank's validation or checkpoint)."""
        self._seq += 1
        msg = _MSG.pack(phase, self._seq)
        for k in range(self.size):
            if k != self.rank:
                try:
                    self._sock.sendto(msg, _address(self.token, k))
                except (ConnectionRefusedError, FileNotFoundError) as e:
                    raise LocalReduceFailed(f"rank {k} (pid {self.pids[k]}) no longer listens: {e}") from None
        waiting = self.size - 1 - self._early.pop((phase, self._seq), 0)
        started = time.monotonic()
        try:
            self._receive(phase, waiting, started, patient)
        finally:
            self.wait_s += time.monotonic() - started

    def _receive(self, phase: int, waiting: int, started: float, patient: bool) -> None:
        deadline = None if patient else started + self.timeout_s
        said = started
        self._sock.settimeout(ALIVE_CHECK_S)
        while waiting > 0:
            try:
                got = _MSG.unpack(self._sock.recv(_MSG.size))
            except socket.timeout:
                self._check_peers(phase, deadline)
                if time.monotonic() - said >= STALL_LOG_S:
                    said = time.monotonic()
                    log.warning("rank %d has waited %.0f s for the other ranks (shared-memory phase %d)",
                                self.rank, said - started, phase)
                continue
            if got == (phase, self._seq):
                waiting -= 1
            elif got[1] > self._seq:   # a rank already past this barrier (possible with 3 or more ranks)
                self._early[got] = self._early.get(got, 0) + 1
            else:
                raise LocalReduceFailed(f"rank {self.rank} expected step {(phase, self._seq)}, got {got}: "
                                        "the ranks' collectives are out of order")

    def _check_peers(self, phase: int, deadline: float | None) -> None:
        # every dead peer is named: the first to die may not be the first in rank order (a rank that saw it die
        # fails and exits too, and can be found dead before it)
        dead = [f"rank {k} (pid {pid})" for k, pid in enumerate(self.pids) if k != self.rank and not _alive(pid)]
        if dead:
            raise LocalReduceFailed(f"{', '.join(dead)} exited during a shared-memory allreduce")
        if deadline is not None and time.monotonic() > deadline:
            raise LocalReduceFailed(f"no answer from the other ranks for {self.timeout_s:.0f} s "
                                    f"(shared-memory allreduce, phase {phase})")


def _address(token: str, rank: int) -> bytes:
    return f"\0semhash-reduce-{token}-{rank}".encode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its launcher) is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def supported(t: torch.Tensor) -> bool:
    """Whether the shared-memory path takes ``t`` (others go to the network collectives)."""
    return t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()


def open_group(rank: int, size: int, broadcast_object: Callable, allgather_object: Callable,
               slot_mb: float = DEFAULT_SLOT_MB, timeout_s: float = 120.0) -> LocalReducer | None:
    """Sets up the group on every rank (collectively); None on every rank when any rank cannot take part.

    ``broadcast_object`` / ``allgather_object`` are the job's own (Horovod's) collectives, used only here.
    """
    slot_floats = max(1024, int(slot_mb * 2**20) // 4)
    token = broadcast_object(os.urandom(8).hex() if rank == 0 else None)
    error = None
    if rank == 0:
        try:
            LocalReducer.create_segment(token, size, slot_floats)
        except OSError as e:
            error = f"cannot reserve {LocalReducer.segment_bytes(size, slot_floats) >> 20} MiB in {SHM_DIR}: {e}"
    error = broadcast_object(error)
    reducer = None
    if error is None:
        pids = allgather_object(os.getpid())
        try:
            reducer = LocalReducer.attach(rank, size, token, pids, slot_floats, timeout_s)
        except OSError as e:
            error = f"rank {rank}: {e}"
    errors = [e for e in allgather_object(error) if e]
    if rank == 0:
        try:
            os.unlink(os.path.join(SHM_DIR, f"semhash-reduce-{token}"))   # mapped by all (or given up): no leak
        except FileNotFoundError:
            pass
    if errors:
        if reducer is not None:
            reducer.close()
        if rank == 0:
            log.warning("shared-memory allreduce unavailable, averaging over the network: %s", errors[0])
        return None
    reducer.handshake()
    return reducer

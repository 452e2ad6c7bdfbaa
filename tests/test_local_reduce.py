"""The shared-memory allreduce of ranks on one host, with real processes (no Horovod needed)."""
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch

from semhash_spark import local_reduce as lr

CTX = mp.get_context("fork")


def _shapes():
    return [(7,), (300, 5), (1,), (2, 3, 11), (1000,)]


def _tensors(rank: int, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(s, generator=g) for s in _shapes()]


def _views_step(r, ts):
    """The zero-copy protocol: the first tensor computed into the slot (scratch), the others submitted as they
    are, every average read as a view of the result; returns (averages, how many were views, inputs unchanged)."""
    buf = r.scratch(ts[0].numel())
    first = ts[0] if buf is None else buf.copy_(ts[0].view(-1)).view(ts[0].shape)
    given = [first, *ts[1:]]
    before = [t.clone() for t in ts[1:]]
    averages, views = [], 0
    for part in (given[:3], given[3:]):
        recs = [r.submit(t, view=True) for t in part]
        r.flush(views=True)
        for rec in recs:   # read before the next collective overwrites the result region
            views += rec.value.data_ptr() != rec.tensor.data_ptr()
            averages.append(rec.value.numpy().copy())
    untouched = all(torch.equal(a, b) for a, b in zip(ts[1:], before))
    return averages, views, untouched


def _rank(rank, size, token, slot_floats, start, pids_q, out_q, steps, die_at, views=False):
    torch.set_num_threads(1)
    pids = start.get()
    r = lr.LocalReducer.attach(rank, size, token, pids, slot_floats, timeout_s=30)
    pids_q.put(rank)
    start.get()                        # every rank has bound its socket (open_group: an allgather)
    try:
        r.handshake()
        for step in range(steps):
            if rank == die_at and step == 2:
                os._exit(3)
            ts = _tensors(rank, step)
            if views:
                averages, n_views, untouched = _views_step(r, ts)
                out_q.put((rank, step, averages, (n_views, untouched)))
                continue
            for t in ts[:3]:           # several submits, then a wait, as training does
                r.submit(t)
            r.flush()
            for t in ts[3:]:
                r.submit(t)
            r.flush()
            out_q.put((rank, step, [t.numpy().copy() for t in ts]))
        out_q.put((rank, "done", None))
    except lr.LocalReduceFailed as e:
        out_q.put((rank, "failed", str(e)))


def _run_group(tmp_token, size, slot_floats, steps, die_at=-1, views=False):
    lr.LocalReducer.create_segment(tmp_token, size, slot_floats)
    starts = [CTX.Queue() for _ in range(size)]
    attached, out = CTX.Queue(), CTX.Queue()
    procs = [CTX.Process(target=_rank, args=(k, size, tmp_token, slot_floats, starts[k], attached, out, steps,
                                              die_at, views)) for k in range(size)]
    for p in procs:
        p.start()
    pids = [p.pid for p in procs]
    for q in starts:
        q.put(pids)
    for _ in range(size):
        attached.get(timeout=30)
    for q in starts:
        q.put("go")
    os.unlink(os.path.join(lr.SHM_DIR, f"semhash-reduce-{tmp_token}"))   # mapped by all: nothing left behind
    results, deadline = [], time.monotonic() + 60
    while len([r for r in results if r[1] in ("done", "failed")]) < size - (die_at >= 0):
        results.append(out.get(timeout=max(1, deadline - time.monotonic())))
    for p in procs:
        p.join(timeout=30)
    return results


@pytest.mark.parametrize("size,slot_floats", [(2, 1 << 16), (3, 1024), (4, 500)])
def test_every_rank_gets_the_mean_of_every_tensor(size, slot_floats):
    # slot_floats below the 3,000-float total forces flushes in mid-tensor: any size goes through any slot
    results = _run_group(os.urandom(6).hex(), size, slot_floats, steps=4)
    assert sorted(r[0] for r in results if r[1] == "done") == list(range(size))
    for step in range(4):
        got = {r[0]: r[2] for r in results if r[1] == step}
        assert sorted(got) == list(range(size))
        want = [np.mean([_tensors(k, step)[i].numpy() for k in range(size)], axis=0) for i in range(len(_shapes()))]
        for k in range(size):
            for a, b in zip(got[k], want):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
            for a, b in zip(got[k], got[0]):
                assert np.array_equal(a, b)   # bit-identical on every rank: the models cannot drift apart
    assert not [f for f in os.listdir(lr.SHM_DIR) if f.startswith("semhash-reduce-")]


@pytest.mark.parametrize("size,slot_floats", [(2, 1 << 16), (3, 1024)])
def test_averages_handed_out_as_views_and_computed_in_the_slot_are_the_mean(size, slot_floats):
    # with room, every average is a view of the shared result and the inputs stay as they were; with a 1,024-float
    # slot the 1,500- and 1,000-float tensors are split by flushes in mid-tensor and come back averaged in place
    results = _run_group(os.urandom(6).hex(), size, slot_floats, steps=3, views=True)
    assert sorted(r[0] for r in results if r[1] == "done") == list(range(size))
    for step in range(3):
        got = {r[0]: r for r in results if r[1] == step}
        assert sorted(got) == list(range(size))
        want = [np.mean([_tensors(k, step)[i].numpy() for k in range(size)], axis=0) for i in range(len(_shapes()))]
        for k in range(size):
            _, _, averages, (n_views, untouched) = got[k]
            for a, b in zip(averages, want):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
            for a, b in zip(averages, got[0][2]):
                assert np.array_equal(a, b)
            if slot_floats == 1 << 16:
                assert n_views == len(_shapes()) and untouched
            else:
                assert 0 < n_views < len(_shapes())


def test_a_dead_rank_fails_the_others_instead_of_hanging():
    t0 = time.monotonic()
    results = _run_group(os.urandom(6).hex(), 3, 1 << 12, steps=5, die_at=1)
    failed = [r for r in results if r[1] == "failed"]
    assert sorted(r[0] for r in failed) == [0, 2]
    assert all("rank 1" in r[2] for r in failed), failed
    assert time.monotonic() - t0 < 30


def test_only_float32_cpu_contiguous_tensors_take_the_shared_path():
    assert lr.supported(torch.zeros(3))
    assert not lr.supported(torch.zeros(3, dtype=torch.float64))
    assert not lr.supported(torch.zeros(4, 4).T)


def test_a_segment_too_big_for_dev_shm_is_refused_at_setup():
    free = os.statvfs(lr.SHM_DIR)
    too_many_floats = (free.f_bavail * free.f_frsize) // 4 + (1 << 20)
    with pytest.raises(OSError):
        lr.LocalReducer.create_segment(os.urandom(6).hex(), 1, too_many_floats)
    assert not [f for f in os.listdir(lr.SHM_DIR) if f.startswith("semhash-reduce-")]


def _small_rank(rank, size, token, slot_floats, start, pids_q, out_q, slow_s):
    torch.set_num_threads(1)
    pids = start.get()
    r = lr.LocalReducer.attach(rank, size, token, pids, slot_floats, timeout_s=1)
    pids_q.put(rank)
    start.get()
    try:
        r.handshake()
        got = {}
        r.submit(torch.full((10,), float(rank)))     # a pending gradient goes first, as at an epoch's end
        got["scalars"] = r.allreduce_scalars([rank + 0.1, 1e-300 * rank, 3.0])
        weights = [torch.full((s,), float(rank)) for s in (700, 5, 1200)]   # 1905 floats through 1024-float slots
        r.broadcast_(weights, root=1)
        got["weights"] = [w.numpy().copy() for w in weights]
        if rank == 0:
            time.sleep(slow_s)                       # a rank validating for longer than the step timeout
        got["small"] = r.broadcast_object({"stop": rank == 0, "epoch": 7} if rank == 0 else None, root=0)
        got["large"] = r.broadcast_object(b"x" * (8 * slot_floats) if rank == 1 else None, root=1)
        r.barrier()
        got["after"] = r.allreduce_scalars([float(rank)])
        out_q.put((rank, "done", got))
    except lr.LocalReduceFailed as e:
        out_q.put((rank, "failed", str(e)))


def test_metrics_decisions_and_weights_go_through_the_slots_and_wait_for_a_slow_rank():
    size, slot_floats, token = 3, 1024, os.urandom(6).hex()
    lr.LocalReducer.create_segment(token, size, slot_floats)
    starts = [CTX.Queue() for _ in range(size)]
    attached, out = CTX.Queue(), CTX.Queue()
    procs = [CTX.Process(target=_small_rank, args=(k, size, token, slot_floats, starts[k], attached, out, 2.5))
             for k in range(size)]
    for p in procs:
        p.start()
    for q in starts:
        q.put([p.pid for p in procs])
    for _ in range(size):
        attached.get(timeout=30)
    for q in starts:
        q.put("go")
    os.unlink(os.path.join(lr.SHM_DIR, f"semhash-reduce-{token}"))
    results = {}
    for _ in range(size):
        rank, status, got = out.get(timeout=60)
        assert status == "done", got          # the 2.5 s wait outlasted timeout_s=1 without failing anyone
        results[rank] = got
    for p in procs:
        p.join(timeout=30)
    want = [np.float64(0.1) + 1.1 + 2.1, 0.0 + 1e-300 + 2e-300, 9.0]
    for k in range(size):
        got = results[k]
        assert got["scalars"] == results[0]["scalars"]                       # the same bits on every rank
        np.testing.assert_allclose(got["scalars"], [w / 3 for w in want], rtol=1e-15)
        assert [w.tolist() for w in got["weights"]] == [[1.0] * s for s in (700, 5, 1200)]
        assert got["small"] == (True, {"stop": True, "epoch": 7})
        assert got["large"] == (False, None)     # too large for a slot: every rank, the root too, is told so
        assert got["after"] == [1.0]


def test_a_rank_dead_while_the_others_wait_patiently_fails_them():
    size, slot_floats, token = 2, 1024, os.urandom(6).hex()
    lr.LocalReducer.create_segment(token, size, slot_floats)
    ready = CTX.Queue()

    def waiter(pids_q, out_q):
        pids = pids_q.get()
        r = lr.LocalReducer.attach(0, size, token, pids, slot_floats, timeout_s=1)
        ready.put(0)
        pids_q.get()                   # every rank has bound its socket
        try:
            r.handshake()
            r.broadcast_object("never sent", root=1)
            out_q.put("returned")
        except lr.LocalReduceFailed as e:
            out_q.put(str(e))

    def dier(pids_q):
        pids = pids_q.get()
        r = lr.LocalReducer.attach(1, size, token, pids, slot_floats, timeout_s=1)
        ready.put(1)
        pids_q.get()
        r.handshake()
        time.sleep(2.0)
        os._exit(3)

    qs, out = [CTX.Queue(), CTX.Queue()], CTX.Queue()
    procs = [CTX.Process(target=waiter, args=(qs[0], out)), CTX.Process(target=dier, args=(qs[1],))]
    for p in procs:
        p.start()
    for q in qs:
        q.put([p.pid for p in procs])
    ready.get(timeout=30), ready.get(timeout=30)
    for q in qs:
        q.put("go")
    os.unlink(os.path.join(lr.SHM_DIR, f"semhash-reduce-{token}"))
    msg = out.get(timeout=30)
    for p in procs:
        p.join(timeout=30)
    assert "rank 1" in msg and "exited" in msg, msg

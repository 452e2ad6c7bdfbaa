"""The lookup service through its real HTTP interface (uvicorn on loopback) against a real local S3 server.

Answers are checked against the library's exact :class:`HammingIndex` on the same published version (same
ordinals, so ties come out in the same order) and against brute force.
"""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest

from semhash_spark import codes as C
from semhash_spark.index import published as X
from semhash_spark.io import store
from semhash_spark.client import SemhashClient, ServiceError, query_server
from semhash_spark.service import Settings, build_app, running_server
from service_util import brute_force, build_index, text_of

FAST = dict(poll_seconds=0.2, fetch_timeout_s=2.0, failure_backoff_s=0.5, log_requests=False)


@pytest.fixture(scope="module", autouse=True)
def fail_fast_s3(s3_server):
    import os

    old = os.environ.get("AWS_MAX_ATTEMPTS")
    os.environ["AWS_MAX_ATTEMPTS"] = "1"
    yield
    if old is None:
        os.environ.pop("AWS_MAX_ATTEMPTS", None)
    else:
        os.environ["AWS_MAX_ATTEMPTS"] = old


def wait_for(pred, timeout=20.0, step=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (ServiceError, OSError):
            pass
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def serve(uri, **kw):
    """Context manager: the app on a real server; yields (url, service)."""
    app = build_app(Settings(index_uri=uri, **{**FAST, **kw}))
    return running_server(app), app.state.service


@pytest.fixture(scope="module")
def main(s3_server):
    uri = s3_server.uri("svc-main")
    info = build_index(uri, n=2000, bits=32, address_bits=16, partition_bits=4)
    ctx, svc = serve(uri)
    with ctx as url:
        c = SemhashClient(url)
        wait_for(lambda: c.ready()["status"] == "ok", what="first version")
        info.update(url=url, client=c, svc=svc, uri=uri, lib=X.HammingIndex.open(uri).load_all())
        yield info


def hexes(codes):
    return [bytes(r).hex() for r in codes]


def lib_knn(info, codes, k):
    D, I = info["lib"].search(codes, k)
    return [[(i, int(d)) for i, d in zip(info["lib"].ids_of(I[j]), D[j]) if i is not None] for j in range(len(codes))]


def lib_range(info, codes, r):
    lims, D, I = info["lib"].range_search(codes, r)
    ids = info["lib"].ids_of(I)
    return [[(ids[t], int(D[t])) for t in range(lims[j], lims[j + 1])] for j in range(len(codes))]


def pairs(result):
    return [(h["id"], h["distance"]) for h in result]


# --------------------------------------------------------------------------------------------- answers


def test_search_by_code_equals_exact_index(main):
    rng = np.random.default_rng(1)
    q = np.concatenate(
        [main["codes"][rng.choice(len(main["codes"]), 4)], C.pack_bits(rng.integers(0, 2, size=(4, 32)))]
    )
    for k in (1, 10, 50):
        out = main["client"].search(codes=hexes(q), k=k)
        assert out["version"] == main["version"] and not out["partial"]
        assert [pairs(r) for r in out["results"]] == lib_knn(main, q, k)
    for r in (0, 2, 4):
        out = main["client"].search(codes=hexes(q), radius=r)
        assert [pairs(x) for x in out["results"]] == lib_range(main, q, r)
        H = brute_force(main["codes"], q)
        assert [len(x) for x in out["results"]] == [int((H[j] <= r).sum()) for j in range(len(q))]
    out = main["client"].search(codes=hexes(q), k=5, radius=3)  # k nearest within the radius
    assert [pairs(x) for x in out["results"]] == [[p for p in row if p[1] <= 3][:5] for row in lib_knn(main, q, 5)]


def test_early_stopping_knn_within_eps_of_the_exact_distances(main):
    """``eps``: each result's distance is its true one and within (1 + eps) of the exact answer's at its rank;
    ``eps = 0`` is the exact answer; a large eps skips rings of partitions and changes some answers."""
    rng = np.random.default_rng(5)
    q = C.pack_bits(rng.integers(0, 2, size=(12, 32)))
    H = brute_force(main["codes"], q)
    row = {x: t for t, x in enumerate(main["ids"])}
    exact = main["client"].search(codes=hexes(q), k=10)
    assert main["client"].search(codes=hexes(q), k=10, eps=0)["results"] == exact["results"]
    differs = 0
    for eps in (0.5, 3.0):
        out = main["client"].search(codes=hexes(q), k=10, eps=eps)
        assert out["version"] == main["version"] and not out["partial"]
        for j in range(len(q)):
            got, want = pairs(out["results"][j]), pairs(exact["results"][j])
            assert len(got) == 10 and len({i for i, _ in got}) == 10
            assert all(d == H[j][row[i]] for i, d in got)
            assert all(g[1] <= (1 + eps) * w[1] for g, w in zip(got, want))
            differs += got != want
    assert differs > 0


def test_early_stopping_reads_the_next_ring_when_it_may_hold_a_closer_code(main):
    """A query one prefix bit away from an indexed code x (so x sits in the next ring of partitions, 1 bit away),
    whose own partition's nearest is d0 >= 2 bits away: with eps just under d0 - 1, stopping after its own
    partition would break the bound (d0 > (1 + eps) * 1), so the answer must be x's distance, 1."""
    bits, pb = main["bits"], main["partition_bits"]
    B = C.unpack_bits(main["codes"], bits)
    part = C.prefix(main["codes"], pb)
    found = None
    for i in range(len(B)):
        for b in range(pb):
            q = B[i].copy()
            q[b] ^= 1
            qc = C.pack_bits(q[None, :])
            d = brute_force(main["codes"], qc)[0]
            own = d[part == C.prefix(qc, pb)[0]]
            if own.size and own.min() >= 2 and d.min() == 1 and (found is None or own.min() < found[1]):
                found = (qc, int(own.min()))
        if found and found[1] == 2:
            break
    assert found is not None
    qc, d0 = found
    eps = d0 - 1 - 0.1
    out = main["client"].search(codes=hexes(qc), k=1, eps=eps)["results"][0]
    assert [h["distance"] for h in out] == [1]
    assert main["client"].search(codes=hexes(qc), k=1, eps=d0)["results"][0][0]["distance"] <= (1 + d0) * 1


def test_search_by_id_text_and_word_counts(main):
    c, i = main["client"], 11
    by_code = c.search(codes=hexes(main["codes"][i : i + 1]), k=8)
    by_id = c.search(ids=[main["ids"][i]], k=8)
    assert by_id["results"] == by_code["results"] and by_id["codes"] == hexes(main["codes"][i : i + 1])
    assert (main["ids"][i], 0) in pairs(by_id["results"][0])
    by_text = c.search(texts=[text_of(main["bags"][i])], k=8)  # tokenised + encoded by the index's model
    assert by_text["codes"] == by_code["codes"] and by_text["results"] == by_code["results"]
    ids, counts = main["bags"][i]
    bag = {main["hasher"].vocab[int(w)]: float(n) for w, n in zip(ids, counts)}
    assert c.search(word_counts=[bag], k=8)["results"] == by_code["results"]


def test_batch_equals_single_queries(main):
    q = main["codes"][[3, 500, 1999]]
    batch = main["client"].search(codes=hexes(q), k=6)
    assert len(batch["results"]) == 3
    for j in range(3):
        assert batch["results"][j] == main["client"].search(codes=hexes(q[j : j + 1]), k=6)["results"][0]


def test_rerank_tfidf(main):
    i = 42
    out = main["client"].search(ids=[main["ids"][i]], k=10, rerank="tfidf")["results"][0]
    scores = [h["score"] for h in out]
    assert out[0]["id"] == main["ids"][i] and scores[0] == pytest.approx(1.0)
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 + 1e-6 for s in scores)
    shortlist = {h["id"] for h in main["client"].search(ids=[main["ids"][i]], k=100)["results"][0]}
    assert {h["id"] for h in out} <= shortlist  # re-ranks the 100-code shortlist
    ball = main["client"].search(texts=[text_of(main["bags"][i])], radius=2, rerank="tfidf")["results"][0]
    assert all(h["distance"] <= 2 for h in ball) and any(h["id"] == main["ids"][i] for h in ball)


def test_address_radius_is_the_address_ball(main):
    q = main["codes"][[7, 1234]]
    ab = main["address_bits"]
    out = main["client"].search(codes=hexes(q), address_radius=1)
    A = C.prefix(main["codes"], ab)
    for j in range(2):
        got = pairs(out["results"][j])
        near = np.flatnonzero(C.int_hamming(A, int(C.prefix(q[j : j + 1], ab)[0])) <= 1)
        d = brute_force(main["codes"], q[j : j + 1])[0]
        assert sorted(h for h, _ in got) == sorted(main["ids"][t] for t in near)
        assert [x for _, x in got] == sorted(int(d[t]) for t in near)  # by the ranking code's distance


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"codes": ["zz" * 4], "k": 3}, 422, "not a hex code"),
        ({"codes": ["abcd"], "k": 3}, 422, "32-bit code is 8 hex digits"),
        ({"ids": ["no-such-doc"], "k": 3}, 404, "unknown id"),
        ({"texts": ["   "], "k": 3}, 422, "texts[0] is empty"),
        ({"texts": ["the of and"], "k": 3}, 422, "no word of the index"),
        ({"codes": ["00000000"] * 10001, "k": 3}, 413, "at most 10000"),
        ({"codes": ["00000000", 7], "k": 3}, 422, "codes[1] must be a hex string"),
        ({"codes": "00000000", "k": 3}, 422, "codes must be a list"),
        ({"codes": ["00000000"], "k": "3"}, 422, "k='3'"),
        ({"codes": ["00000000"]}, 422, "give k"),
        ({"codes": ["00000000"], "k": 100000}, 422, "out of range"),
        ({"codes": ["00000000"], "radius": -1}, 422, "out of range"),
        ({"codes": ["00000000"], "ids": ["x"], "k": 1}, 422, "exactly one of"),
        ({"codes": ["00000000"], "k": 1, "rerank": "tfidf"}, 422, "needs words"),
        ({"codes": ["00000000"], "k": 1, "rerank": "code"}, 422, "rerank"),
        ({"codes": ["00000000"], "address_radius": 17}, 422, "address_radius=17"),
        ({"codes": ["00000000"], "k": 1, "rerank": "bm25"}, 422, "rerank"),
        ({"word_counts": [{"zqaaa": -1}], "k": 1}, 422, "positive"),
        ({"codes": ["00000000"], "k": 1, "colour": "red"}, 422, "colour"),
        ({"codes": ["00000000"], "k": 1, "eps": -0.5}, 422, "eps=-0.5"),
        ({"codes": ["00000000"], "radius": 2, "eps": 0.5}, 422, "eps applies to k nearest"),
        ({"codes": ["00000000"], "k": 1, "msh": True}, 422, "msh is a query by images"),
        ({"images": ["aGk="], "k": 1, "msh": "yes"}, 422, "msh='yes'"),
        ({"images": ["aGk="], "k": 1, "msh": True}, 422, "not an image index"),
    ],
)
def test_malformed_queries_get_4xx_with_a_message(main, body, status, needle):
    with pytest.raises(ServiceError) as e:
        main["client"].request("POST", "/search", body)
    assert e.value.status == status
    assert needle in e.value.message


def test_not_json_is_4xx(main):
    import http.client

    conn = http.client.HTTPConnection(main["url"].split("//")[1])
    conn.request("POST", "/search", body=b"{not json", headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 422


def test_batch_of_10000_codes_is_one_request_and_exact(main):
    rng = np.random.default_rng(5)
    q = main["codes"][rng.integers(0, len(main["codes"]), 10000)]
    out = main["client"].search(codes=hexes(q), k=10)
    assert len(out["results"]) == 10000 and out["codes"] == hexes(q)
    pick = rng.choice(10000, 20, replace=False)
    want = lib_knn(main, q[pick], 10)
    for j, i in enumerate(pick):
        assert [d for _, d in pairs(out["results"][i])] == [d for _, d in want[j]]


def test_binary_body_answers_as_hex(main):
    rng = np.random.default_rng(6)
    q = np.concatenate(
        [main["codes"][rng.choice(len(main["codes"]), 5)], C.pack_bits(rng.integers(0, 2, size=(3, 32)))]
    )
    for kw in ({"k": 7}, {"radius": 3}):
        assert main["client"].search_codes(q, **kw)["results"] == main["client"].search(codes=hexes(q), **kw)["results"]
    with pytest.raises(ServiceError) as e:
        main["client"].request("POST", "/search?k=3", b"\x00" * 6, content_type="application/octet-stream")
    assert e.value.status == 422 and "whole number of 32-bit codes" in e.value.message
    with pytest.raises(ServiceError) as e:
        main["client"].request("POST", "/search?k=3&colour=red", b"\x00" * 4, content_type="application/octet-stream")
    assert e.value.status == 422 and "colour" in e.value.message
    with pytest.raises(ServiceError) as e:
        main["client"].request("POST", "/search", b"k=3", content_type="text/plain")
    assert e.value.status == 415


def test_search_many_streams_batches_in_order(main):
    ids = [main["ids"][i] for i in range(0, 2000, 37)]
    got = list(main["client"].search_many("ids", iter(ids), batch_size=7, k=3))
    assert [r["query"] for r in got] == ids
    assert [r["results"] for r in got] == main["client"].search(ids=ids, k=3)["results"]
    assert all(r["results"][0]["distance"] == 0 for r in got)


def test_openapi_and_health(main):
    spec = main["client"].request("GET", "/openapi.json")
    assert "/search" in spec["paths"] and "SearchRequest" in json.dumps(spec)
    # the token (enforced by GuardMiddleware, not a route dependency) is documented for Swagger's Authorize
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/search"]["post"]["security"] == [{"HTTPBearer": []}]
    h = main["client"].health()
    assert h["status"] == "ok" and h["version"] == main["version"] and h["codes"] == 2000


def test_metrics(main):
    main["client"].search(codes=hexes(main["codes"][:1]), k=3)
    text = main["client"].metrics()
    for needle in (
        "semhash_request_seconds_bucket",
        'route="/search"',
        "semhash_cache_hits_total",
        "semhash_partitions_read_total",
        f'semhash_index_version_info{{version="{main["version"]}"}} 1.0',
        "semhash_cache_bytes",
        "semhash_queries_total",
    ):
        assert needle in text, needle


def test_query_server_function(main, capsys):
    out = query_server(main["url"], codes=hexes(main["codes"][:1]), k=2)
    assert out["version"] == main["version"] and len(out["results"][0]) == 2
    assert query_server(main["url"], codes=hexes(main["codes"][:1]), k=2, eps=0.5)["results"][0][0]["distance"] == 0
    from semhash_spark.cli import main as cli_main  # semhash query --server URL --code HEX --k 3 --eps 0.5

    assert (
        cli_main(
            [
                "query",
                "--server",
                main["url"],
                "--code",
                hexes(main["codes"][:1])[0],
                "--k",
                "3",
                "--eps",
                "0.5",
                "--json",
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["version"] == main["version"] and got["results"][0][0]["distance"] == 0


def test_cli_streams_an_ids_file(main, tmp_path, capsys):
    from semhash_spark.cli import main as cli_main  # semhash query --server URL --ids-file F --batch-size 4 --k 2

    ids = [main["ids"][i] for i in range(0, 2000, 97)]
    f = tmp_path / "ids.txt"
    f.write_text("\n".join(ids) + "\n\n")
    assert cli_main(["query", "--server", main["url"], "--ids-file", str(f), "--batch-size", "4", "--k", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines() if x.startswith("{")]
    assert [r["query"] for r in lines] == ids
    assert [r["results"] for r in lines] == main["client"].search(ids=ids, k=2)["results"]


def test_spark_map_in_pandas_searches_through_the_service(spark, main):
    from semhash_spark.client import SPARK_SCHEMA, spark_search

    rng = np.random.default_rng(8)
    q = list(dict.fromkeys(hexes(main["codes"][rng.choice(len(main["codes"]), 60, replace=False)])))
    df = spark.createDataFrame([(h,) for h in q], "code string").repartition(3)
    rows = df.mapInPandas(spark_search(main["url"], "code", k=4, batch_size=16), SPARK_SCHEMA).collect()
    got: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r.query, r.rank)):
        assert r.version == main["version"]
        got.setdefault(r.query, []).append((r.id, r.distance))
    want = main["client"].search(codes=q, k=4)["results"]
    assert {h: got[h] for h in q} == {h: pairs(w) for h, w in zip(q, want)}


def test_client_retries_503_then_answers(s3_server, main):
    import http.server

    calls = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            calls.append(time.monotonic())
            body = b'{"detail": "busy"}' if len(calls) < 3 else b'{"status": "ok"}'
            self.send_response(503 if len(calls) < 3 else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = SemhashClient(f"http://127.0.0.1:{srv.server_port}", retries=3, backoff_s=0.05)
        assert c.health() == {"status": "ok"} and len(calls) == 3
        assert calls[2] - calls[1] >= 0.09  # backoff doubles
        calls.clear()
        with pytest.raises(ServiceError) as e:
            SemhashClient(f"http://127.0.0.1:{srv.server_port}", retries=1, backoff_s=0.01).health()
        assert e.value.status == 503 and len(calls) == 2
    finally:
        srv.shutdown()


# --------------------------------------------------------------------------------------------- token


def test_bearer_token_guards_search(s3_server, main):
    ctx, _ = serve(main["uri"], token="s3cret")
    with ctx as url:
        open_client, good, bad = SemhashClient(url), SemhashClient(url, token="s3cret"), SemhashClient(url, token="x")
        wait_for(lambda: open_client.health()["status"] == "ok")  # health stays open
        with pytest.raises(ServiceError) as e:
            open_client.search(codes=["00000000"], k=1)
        assert e.value.status == 401
        with pytest.raises(ServiceError) as e:
            bad.search(codes=["00000000"], k=1)
        assert e.value.status == 403
        assert good.search(codes=["00000000"], k=1)["version"] == main["version"]


# --------------------------------------------------------------------------------------------- versions


def test_version_switch_while_querying(s3_server):
    uri = s3_server.uri("svc-switch")
    v1 = build_index(uri, n=1500, seed=1)
    ctx, svc = serve(uri)
    with ctx as url:
        c0 = SemhashClient(url)
        wait_for(lambda: c0.health()["version"] == v1["version"])
        seen, errors, stop = [], [], threading.Event()
        q = hexes(v1["codes"][:4])

        def hammer():
            c = SemhashClient(url)
            while not stop.is_set():
                try:
                    out = c.search(codes=q, k=5)
                    seen.append((out["version"], {h["id"].split("-")[1] for r in out["results"] for h in r}))
                except Exception as e:  # noqa: BLE001 - every failure is a test failure
                    errors.append(repr(e))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        v2 = build_index(uri, n=1500, seed=2)  # ids doc-2-*, a new model seed is not needed
        wait_for(lambda: c0.health()["version"] == v2["version"], what="the switch")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        versions = [v for v, _ in seen]
        assert set(versions) == {v1["version"], v2["version"]}
        first_v2 = versions.index(v2["version"])
        assert all(v == v2["version"] for v in versions[first_v2 + 50 :])  # no flapping back after the switch
        tag = {v1["version"]: "1", v2["version"]: "2"}
        assert all(tags == {tag[v]} for v, tags in seen)  # no request mixes versions
        assert "semhash_version_switches_total 1.0" in c0.metrics()
        wait_for(
            lambda: svc.cache.keys() and all(k[0] == v2["version"] for k in svc.cache.keys()),
            what="the old version's partitions to leave the cache",
        )


def test_never_serves_a_version_that_does_not_verify(s3_server):
    uri = s3_server.uri("svc-verify")
    v1 = build_index(uri, n=500, seed=3)
    ctx, _ = serve(uri)
    with ctx as url:
        c = SemhashClient(url)
        wait_for(lambda: c.health()["version"] == v1["version"])
        bad = X.new_version_id()
        manifest = dict(v1["manifest"], version=bad, count=v1["manifest"]["count"] + 1)  # counts disagree
        store.write_json(X.manifest_uri(uri, bad), manifest)
        store.write_json(store.join(uri, X.CURRENT), {"version": bad, "manifest": f"versions/{bad}/manifest.json"})
        wait_for(lambda: "semhash_version_load_failures_total 1.0" in c.metrics(), what="a refused version")
        assert c.search(codes=["00000000"], k=1)["version"] == v1["version"]


def test_a_refused_version_is_left_alone_until_its_manifest_changes(s3_server):
    """A version that fails verification is neither leased nor verified again at later polls; a corrected manifest
    is verified and served."""
    from semhash_spark.index import leases
    from semhash_spark.service.runtime import Service

    uri = s3_server.uri("svc-refused")
    v1 = build_index(uri, n=400, seed=3)
    svc = Service(Settings(index_uri=uri, **FAST))
    try:
        assert svc.poll() and svc.current.version == v1["version"]
        bad = X.new_version_id()
        src, dest = X.version_prefix(uri, v1["version"]), X.version_prefix(uri, bad)
        for key, _ in store.list_prefix(src):  # the same shards and model under a new version
            if not key.endswith(X.MANIFEST):
                store.copy_object(store.join(src, key), store.join(dest, key))
        good = dict(v1["manifest"], version=bad)
        store.write_json(X.manifest_uri(uri, bad), dict(good, count=good["count"] + 1))  # counts disagree
        store.write_json(store.join(uri, X.CURRENT), {"version": bad, "manifest": f"versions/{bad}/manifest.json"})

        def failures():
            text = svc.metrics.exposition()[0].decode()
            return float(re.search(r"^semhash_version_load_failures_total (\S+)$", text, re.M).group(1))

        for _ in range(4):
            assert not svc.poll() and svc.current.version == v1["version"]
        assert failures() == 1  # verified once, not at every poll
        assert not leases.live(uri, bad)
        store.write_json(X.manifest_uri(uri, bad), good)  # corrected: verified again, and served
        assert svc.poll() and svc.current.version == bad and failures() == 1
        assert [l["reader"] for l in leases.live(uri, bad)] == [svc.reader_id]
    finally:
        svc.stop()


def test_not_ready_until_published(s3_server):
    uri = s3_server.uri("svc-late")
    ctx, _ = serve(uri)
    with ctx as url:
        c = SemhashClient(url)
        time.sleep(0.3)
        for call in (c.health, lambda: c.search(codes=["00000000"], k=1)):
            with pytest.raises(ServiceError) as e:
                call()
            assert e.value.status == 503
        v = build_index(uri, n=300, seed=4)
        wait_for(lambda: c.health()["version"] == v["version"])


# --------------------------------------------------------------------------------------------- faults


def test_corrupt_shard_gives_partial_answers(s3_server):
    uri = s3_server.uri("svc-corrupt")
    v = build_index(uri, n=1500, seed=5, partition_bits=4)
    victim = v["manifest"]["partitions"][0]
    f = victim["files"][0]
    shard = store.join(X.version_prefix(uri, v["version"]), f["path"])
    store.write_bytes(shard, bytes(int(f["bytes"])))  # same size, wrong bytes: only sha256 tells
    ctx, svc = serve(uri, max_radius=32, max_results=5000)
    with ctx as url:
        c = SemhashClient(url)
        wait_for(lambda: c.ready()["status"] == "ok")
        inside = next(
            i
            for i in range(len(v["codes"]))
            if C.partition_name(int(C.prefix(v["codes"][i : i + 1], 4)[0]), 4) == victim["partition"]
        )
        out = c.search(codes=hexes(v["codes"][inside : inside + 1]), radius=32)  # every partition
        assert out["partial"] and out["missing_partitions"] == [victim["partition"]]
        assert len(out["results"][0]) == len(v["codes"]) - victim["rows"]
        with pytest.raises(ServiceError) as e:  # it needs only the corrupt partition
            c.search(codes=hexes(v["codes"][inside : inside + 1]), radius=0)
        assert e.value.status == 503
        outside = c.search(codes=hexes(v["codes"][inside : inside + 1]), k=3)  # other rings still answer
        assert outside["partial"] and len(outside["results"][0]) == 3
        assert 'semhash_partitions_read_total{outcome="error"}' in c.metrics()


def test_store_down_answers_from_cache_or_503(s3_server):
    """Runs last in this module: stops and restarts the session's S3 server."""
    uri = s3_server.uri("svc-down")
    v = build_index(uri, n=800, seed=6)
    warm_ctx, _ = serve(uri)  # preloads every partition
    cold_ctx, _ = serve(uri, preload=False)  # reads partitions only on demand
    with warm_ctx as warm_url, cold_ctx as cold_url:
        warm, cold = SemhashClient(warm_url), SemhashClient(cold_url)
        wait_for(lambda: warm.ready()["status"] == "ok" and cold.ready()["status"] == "ok")
        q = hexes(v["codes"][:3])
        expected = warm.search(codes=q, k=5)
        s3_server.stop()
        try:
            for _ in range(5):
                out = warm.search(codes=q, k=5)
                assert out == {**expected, "took_ms": out["took_ms"]} and not out["partial"]
            with pytest.raises(ServiceError) as e:
                cold.search(codes=q, k=5)
            assert e.value.status == 503
            time.sleep(0.5)
            assert warm.health()["status"] == "ok" and warm.health()["last_poll_error"]
        finally:
            s3_server.restart()
        wait_for(lambda: cold.search(codes=q, k=5)["results"] == expected["results"], what="recovery")


def test_service_leases_the_version_it_serves_and_retention_keeps_it(s3_server):
    """The served version carries a live reader lease, so a re-index's retention cannot delete it; the replaced
    version's lease is released after the switch, and then retention may delete it."""
    from datetime import datetime, timedelta, timezone

    from semhash_spark.index import leases
    from semhash_spark.index.reindex import apply_retention
    from semhash_spark.service.runtime import Service

    uri = s3_server.uri("svc-leases")
    v1 = build_index(uri, n=300, seed=1)["version"]
    svc = Service(Settings(index_uri=uri, **FAST))
    try:
        assert svc.poll() and svc.current.version == v1
        assert [l["reader"] for l in leases.live(uri, v1)] == [svc.reader_id]
        v2 = build_index(uri, n=300, seed=2)["version"]  # published: CURRENT is v2
        later = datetime.now(timezone.utc) + timedelta(seconds=60)  # both versions "old enough"
        assert svc.poll() and svc.current.version == v2
        # v1 was served until just now: its lease stays one more poll, then it is released
        assert leases.live(uri, v1, later)
        assert apply_retention(uri, 0, now=later)["leased"] == [v1]
        svc.poll()
        assert not leases.live(uri, v1, later) and leases.live(uri, v2, later)
        out = apply_retention(uri, 0, now=later)
        assert out["deleted"] == [v1] and not out["errors"]
    finally:
        svc.stop()
    assert not leases.live(uri, v2)  # released on stop

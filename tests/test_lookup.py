"""The one query module: the library (``semhash query --index``, ``Searcher``, ``HammingIndex``) and the real
service over the same index on a real S3 server give identical results (ids and distances) for ``k``, ``radius``
(ranking code) and ``address_radius`` (address code); an index written without an address model still opens and
answers; encode with an address model writes and publishes both codes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from semhash_spark import cli
from semhash_spark import codes as C
from semhash_spark.index import published as X
from semhash_spark.io import store
from semhash_spark.client import SemhashClient
from semhash_spark.index.lookup import Searcher
from semhash_spark.service import Settings, build_app, running_server
from service_util import brute_force, build_index, text_of

FAST = dict(poll_seconds=0.2, fetch_timeout_s=5.0, failure_backoff_s=0.5, log_requests=False)
QUERIES = (
    {"k": 1},
    {"k": 10},
    {"radius": 0},
    {"radius": 3},
    {"radius": 6},
    {"address_radius": 0},
    {"address_radius": 2},
    {"address_radius": 3, "k": 5},
    {"radius": 6, "k": 4},
)


def _pairs(hits):
    return [(h["id"], h["distance"]) for h in hits]


def _wait_ready(client):
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if client.ready()["status"] == "ok":
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise AssertionError("service never became ready")


@pytest.fixture(scope="module", params=["prefix", "model"])
def both(request, s3_server):
    """The same index served and opened by the library: addresses as the code's prefix (the layout written before
    address models) or from a 12-bit address model of their own."""
    uri = s3_server.uri(f"lookup-{request.param}")
    info = build_index(
        uri,
        n=1500,
        bits=32,
        address_bits=12,
        partition_bits=4,
        seed=3,
        address_model_bits=12 if request.param == "model" else None,
        with_text=request.param == "model",
    )  # the prefix layout: written before text columns
    with running_server(build_app(Settings(index_uri=uri, **FAST))) as url:
        client = SemhashClient(url)
        _wait_ready(client)
        info.update(uri=uri, url=url, client=client, lib=Searcher.open(uri), layout=request.param)
        yield info


def test_library_and_service_agree_on_k_radius_and_address_radius(both, capsys):
    rng = np.random.default_rng(0)
    picks = rng.choice(len(both["ids"]), 6, replace=False)
    texts = [text_of(both["bags"][i]) for i in picks]
    nonempty = 0
    for params in QUERIES:
        lib = both["lib"].search_texts(texts, **{"k": None, **params})
        svc = both["client"].search(texts=texts, **params)
        assert svc["version"] == both["version"] and not svc["partial"]
        cap = 1000 if "k" not in params else None  # the service keeps a ball's nearest max_results
        assert svc["truncated"] == any(cap is not None and len(r) > cap for r in lib)
        assert [_pairs(r) for r in svc["results"]] == [_pairs(r)[:cap] for r in lib], params
        assert both["lib"].search_texts(texts, max_results=1000, **{"k": None, **params}) == [
            [dict(h) for h in r] for r in svc["results"]
        ]
        nonempty += sum(len(r) > 0 for r in lib)
    assert nonempty > 20
    # the ball on the address code is the brute-force ball, ordered by the ranking code
    q_addr = both["lib"].address_counts(both["lib"].vectorize(texts))
    if q_addr is None:
        q_addr = C.prefix(both["lib"].encode_counts(both["lib"].vectorize(texts)), both["address_bits"])
    codes = both["lib"].encode_counts(both["lib"].vectorize(texts))
    got = both["lib"].search_texts(texts, k=None, address_radius=2)
    for j in range(len(texts)):
        near = np.flatnonzero(C.int_hamming(both["addresses"], int(q_addr[j])) <= 2)
        d = brute_force(both["codes"], codes[j : j + 1])[0]
        assert sorted(_pairs(got[j])) == sorted((both["ids"][t], int(d[t])) for t in near)
        assert [h["distance"] for h in got[j]] == sorted(int(d[t]) for t in near)
    # the CLI prints the same {"version", "results"} through the library and through the service
    for flags in (["--k", "7"], ["--radius", "4"], ["--address-radius", "2"]):
        outs = []
        for where in (["--index", both["uri"]], ["--server", both["url"]]):
            assert cli.main(["query", *where, "--text", texts[0], *flags, "--json"]) == 0
            outs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
        assert set(outs[0]) == {"version", "results"} and outs[0]["version"] == outs[1]["version"], flags
        assert outs[1]["results"][0] == outs[0]["results"][0][:1000], flags


def test_tfidf_rerank_agrees(both):
    texts = [text_of(both["bags"][i]) for i in (5, 77)]
    for params in ({"k": 10}, {"address_radius": 2}, {"address_radius": 3, "k": 20}, {"radius": 5, "k": 8}):
        lib = both["lib"].search_texts(texts, rerank="tfidf", max_results=1000, **{"k": None, **params})
        svc = both["client"].search(texts=texts, rerank="tfidf", **params)["results"]
        assert [[(h["id"], h["distance"], h["score"]) for h in r] for r in svc] == [
            [(h["id"], h["distance"], h["score"]) for h in r] for r in lib
        ], params


def test_an_index_written_without_an_address_model_opens_and_answers(both):
    if both["layout"] != "prefix":
        pytest.skip("the old layout only")
    m = X.read_manifest(both["uri"], both["version"])
    assert "address_model" not in m  # the manifest as written before address models
    index = X.HammingIndex.open(both["uri"])
    q = both["codes"][[0, 9]]
    lims, D, I = index.address_lookup(q, 1)  # addresses from the codes' prefix
    A = C.prefix(both["codes"], both["address_bits"])
    for j in range(2):
        near = set(np.flatnonzero(C.int_hamming(A, int(A[[0, 9][j]])) <= 1))
        assert set(index.ids_of(I[lims[j] : lims[j + 1]])) == {both["ids"][t] for t in near}
    D, I = index.search(q, 3)
    assert list(D[:, 0]) == [0, 0]


def test_address_model_index_needs_query_addresses(both):
    if both["layout"] != "model":
        pytest.skip("address-model layout only")
    index = X.HammingIndex.open(both["uri"])
    with pytest.raises(ValueError, match="address model"):
        index.address_lookup(both["codes"][:1], 1)
    from semhash_spark.client import ServiceError

    with pytest.raises(ServiceError) as e:
        both["client"].search(codes=[bytes(both["codes"][0]).hex()], address_radius=1)
    assert e.value.status == 422 and "address model" in e.value.message
    by_id = both["client"].search(ids=[both["ids"][0]], address_radius=0)["results"][0]  # stored address
    want = np.flatnonzero(both["addresses"] == both["addresses"][0])
    assert {h["id"] for h in by_id} == {both["ids"][t] for t in want}


@pytest.mark.slow
def test_encode_with_an_address_model(spark, small_dataset, tmp_path):
    """Two models built in the test through the checkpoint API (16-bit ranking, 8-bit address) on the small
    prepared corpus; the index keeps both codes, is partitioned by the address and carries both models."""
    from semhash_spark.models import checkpoint
    from semhash_spark.data import dataset as ds
    from semhash_spark.config import load_config
    from semhash_spark.index.encode import encode_to_index
    from service_util import make_model

    words, doc_freq, n = ds.read_vocab(str(small_dataset))
    vocab = {
        "words": words,
        "doc_freq": doc_freq.tolist(),
        "num_train_docs": n,
        "fingerprint": ds.read_metadata(str(small_dataset)).get("vocab_fingerprint"),
    }
    cfg = load_config(None, ["index.partition_bits=3"])
    ranking, address = str(tmp_path / "m16"), str(tmp_path / "m8")
    checkpoint.save_model(ranking, make_model(len(words), 16, 1), cfg, extra={"vocab": vocab})
    checkpoint.save_model(address, make_model(len(words), 8, 2), cfg, extra={"vocab": vocab})
    index_uri = str(tmp_path / "index")
    # refused before anything is written: a patch model on documents, an address model of other inputs
    with pytest.raises(ValueError, match="--patch-model is for image datasets"):
        encode_to_index(spark, ranking, str(small_dataset), index_uri, cfg, patch_model_uri=address)
    other = str(tmp_path / "m8-other")
    checkpoint.save_model(other, make_model(len(words) + 1, 8, 3), cfg, extra={})
    with pytest.raises(ValueError, match=f"takes {len(words) + 1} inputs, the ranking model {len(words)}"):
        encode_to_index(spark, ranking, str(small_dataset), index_uri, cfg, address_model_uri=other)
    assert not store.exists(store.join(index_uri, "CURRENT"))
    rep = encode_to_index(spark, ranking, str(small_dataset), index_uri, cfg, address_model_uri=address)
    assert rep["bits"] == 16 and rep["address_bits"] == 8 and rep["partition_bits"] == 3
    m = X.read_manifest(index_uri, rep["version"])
    assert m["address_model"]["path"] == "address_model" and m["address_model"]["bits"] == 8
    assert m["bits"] == 16 and m["address_bits"] == 8
    vp = X.version_prefix(index_uri, rep["version"])
    assert store.exists(store.join(vp, "address_model", "model.json"))
    index = X.HammingIndex.open(index_uri).load_all()
    I = np.arange(index.ntotal)
    codes, addrs = index.codes_of(I), index.addresses_of(I)
    # the stored address is the address model's code of the same document, not the ranking code's prefix
    s = Searcher.open(index_uri)
    assert s.address_hasher is not None and s.address_hasher.bits == 8
    assert not np.array_equal(addrs, C.prefix(codes, 8))
    # partitions are prefixes of the address
    starts = np.concatenate([[0], np.cumsum([p["rows"] for p in m["partitions"]])])
    for p, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        assert np.all(addrs[a:b] >> np.uint64(5) == int(m["partitions"][p]["partition"], 16))
    # a query finds its own document at ranking distance 0 inside its own address ball
    bags = index.word_counts_of(I[:3])
    hits = s.search_codes(
        codes[:3], k=None, address_radius=0, addresses=C.prefix(s.address_hasher.codes(s._dense(list(bags))), 8)
    )
    ids = index.ids_of(I[:3])
    for j in range(3):
        assert (ids[j], 0) in _pairs(hits[j])
    # the shards carry each document's labels and snippet from the prepared data set; details returns them
    assert set(X.TEXT_COLUMNS) <= set(m["columns"])
    want = {}
    for split in ds.SPLITS:
        for f in ds.split_files(str(small_dataset), split):
            for r in pq.read_table(f, columns=[ds.ID, ds.LABELS, ds.SNIPPET]).to_pylist():
                want[r[ds.ID]] = {"labels": r[ds.LABELS], "snippet": r[ds.SNIPPET]}
    shown = s.search_codes(codes[:50], k=3, details=True)
    assert all({"labels": h["labels"], "snippet": h["snippet"]} == want[h["id"]] for r in shown for h in r)
    assert sum(bool(h["snippet"]) for r in shown for h in r) > 100


def test_semhash_serve_and_python_m_service_take_one_set_of_flags():
    import argparse
    import subprocess
    import sys

    from semhash_spark.service.settings import add_serve_arguments, settings_from_args

    argv = ["--index", "s3://bucket/index", "--cache-bytes", "2G", "--no-preload", "--poll-seconds", "3"]
    via_cli = settings_from_args(cli.build_parser().parse_args(["serve", *argv]))
    via_module = settings_from_args(add_serve_arguments(argparse.ArgumentParser()).parse_args(argv))
    assert via_cli == via_module
    assert via_cli.cache_bytes == 2 << 30 and not via_cli.preload and via_cli.poll_seconds == 3
    defaults = settings_from_args(cli.build_parser().parse_args(["serve", "--index", "x"]))
    assert defaults.poll_seconds == 10 and defaults.preload
    helps = [
        subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout.split("options:")[1]
        for cmd in (
            [sys.executable, "-m", "semhash_spark.cli", "serve", "--help"],
            [sys.executable, "-m", "semhash_spark.service", "--help"],
        )
    ]
    common = {"--json", "--quiet", "--verbose", "--help"}  # every semhash subcommand takes these
    flags = [sorted(set(w.rstrip(",") for w in h.split() if w.startswith("--")) - common) for h in helps]
    assert flags[0] == flags[1] and "--no-preload" in flags[0]


def test_details_and_address_distance_agree_between_library_and_service(both, capsys, tmp_path):
    """Hits of address lookups carry the address distance (checked by brute force); with ``details`` they also
    carry the stored labels and snippet, identically through the library, the service and the CLI. An index
    written without the text columns answers ``details`` with the plain hits."""
    texts = [text_of(both["bags"][i]) for i in (3, 41)]
    row = {i: t for t, i in enumerate(both["ids"])}
    lib_q = both["lib"].address_counts(both["lib"].vectorize(texts))
    if lib_q is None:
        lib_q = C.prefix(both["lib"].encode_counts(both["lib"].vectorize(texts)), both["address_bits"])
    for params in ({"k": 5}, {"address_radius": 2}, {"radius": 5, "k": 8}, {"address_radius": 3, "k": 6}):
        lib = both["lib"].search_texts(texts, details=True, max_results=1000, **{"k": None, **params})
        svc = both["client"].search(texts=texts, details=True, **params)["results"]
        assert svc == lib, params
        plain = both["client"].search(texts=texts, **params)["results"]
        assert [[(h["id"], h["distance"]) for h in r] for r in plain] == [
            [(h["id"], h["distance"]) for h in r] for r in lib
        ]
        assert all("snippet" not in h for r in plain for h in r)  # only when asked
        for j, hits in enumerate(lib):
            for h in hits:
                t = row[h["id"]]
                if "address_radius" in params:
                    assert h["address_distance"] == int(C.int_hamming(both["addresses"][t : t + 1], int(lib_q[j]))[0])
                    assert h["address_distance"] <= params["address_radius"]
                else:
                    assert "address_distance" not in h
                if both["layout"] == "model":
                    assert h["labels"] == both["labels"][t] and h["snippet"] == both["snippets"][t]
                else:
                    assert "labels" not in h and "snippet" not in h
        assert sum(len(r) for r in lib) > 0, params
    # the CLI's table shows them on stderr; its JSON carries them with --details only
    for where in (["--index", both["uri"]], ["--server", both["url"]]):
        assert cli.main(["query", *where, "--text", texts[0], "--k", "3"]) == 0
        cap = capsys.readouterr()
        first = json.loads(cap.out.strip().splitlines()[-1])["results"][0][0]
        assert "snippet" not in first and f"1. {first['id']}  hamming={first['distance']}" in cap.err
        if both["layout"] == "model":
            t = row[first["id"]]
            assert f"[{', '.join(both['labels'][t])}]" in cap.err
            if both["snippets"][t]:
                assert both["snippets"][t] in cap.err
    for where in (["--index", both["uri"]], ["--server", both["url"]]):
        assert cli.main(["query", *where, "--text", texts[0], "--address-radius", "2", "--details", "--json"]) == 0
        cap = capsys.readouterr()
        out = json.loads(cap.out.strip().splitlines()[-1])
        assert out["results"][0][:1000] == lib_first_ball(both, texts[0]) and cap.err.strip() == ""
    # --ids-file streams the service's hits, with labels and snippets when --details is given
    ids = both["ids"][:7]
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    for extra, want in (([], {}), (["--details"], {"details": True})):
        assert (
            cli.main(["query", "--server", both["url"], "--ids-file", str(tmp_path / "ids.txt"), "--k", "3", *extra])
            == 0
        )
        lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines() if x.startswith("{")]
        assert [r["results"] for r in lines] == both["client"].search(ids=ids, k=3, **want)["results"]
        assert any("snippet" in h for r in lines for h in r["results"]) == (bool(extra) and both["layout"] == "model")


def lib_first_ball(both, text):
    return both["lib"].search_texts([text], k=None, address_radius=2, details=True, max_results=1000)[0]

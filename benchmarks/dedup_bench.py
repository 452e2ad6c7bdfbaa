"""Near-duplicates and re-index: ``semhash dedup`` vs datasketch and exact all-pairs answers; re-index runs.

    .venv/bin/python benchmarks/dedup_bench.py [--corpora 20ng,reuters21578] [--json OUT.json]

Three parts, all in one run (``--skip-text`` / ``--skip-reindex`` / ``--skip-scale`` to leave one out):

1. **Text corpora with edited copies** (``--corpora``: 20 Newsgroups, Reuters-21578, raw archives under
   ``$SEMHASH_DATA_DIR``). The corpus's texts plus ``--copies`` edited copies (for each rate in
   ``--edit-rates``, that fraction of a document's words replaced by words drawn from the corpus), written as
   JSONL, prepared, a 64-bit model trained on them (``--train-set`` overrides) and encoded into an index; or,
   with ``--model`` trained elsewhere, indexed by ``reindex --dataset jsonl`` (the model's words): built once,
   not timed (a ``--workdir`` of an earlier run keeps the dataset and model). Ground truth: every pair whose word sets (all tokens as ``prepare``
   tokenises them) have Jaccard >= ``--jaccard``, computed exactly. Timed side by side, ``--repeats`` times:
   datasketch (``MinHash.bulk`` of the word sets, ``MinHashLSH`` threshold 0.7, 128 permutations, each candidate
   checked on the exact Jaccard) from the token sets in memory, and the whole ``semhash dedup --verify
   jaccard:T`` command (its own process: Spark start-up, radius calibration, pairs, clusters, Parquet out) with
   the automatic radius (each ``--target-recall``; ``--plans`` adds Spark's plan and ``--max-pairs 0``; a run
   stopped by its budget is a row with its message). The corpus ``generated`` is ``--generated-docs`` documents
   mixed from ``--generated-from``'s (a million and more): all pairs cannot be checked there, so the truth is
   pooled (:func:`pooled_truth`: every pair inside an injected family and every pair a method found, checked
   exactly). Then a nightly change of ``--nightly-fraction`` of the documents (30% of their words
   replaced), re-indexed (``semhash reindex --dataset jsonl``), deduplicated ``--since`` the first version
   with the previous output and in full, at the same radius.
2. **Scale.** ``N`` random 64-bit codes (1 in 100 a copy of its neighbour with 0-3 bits flipped) generated in
   Spark and written to Parquet; the time of ``near_duplicate_pairs`` (all pairs, materialised and counted) from
   those files, the session warm, at a radius (``N:R`` in ``--scale``)
   against a brute-force popcount all-pairs scan (numba, all cores). The scan runs in full up to
   ``--brute-max`` codes (and must agree with Spark's count); above that its time is extrapolated from its
   measured pair rate (the scan is exactly quadratic). Uniform codes are the pigeonhole join's easy case for
   bucket balance; the 20ng part runs on real, clustered codes.
3. **Re-index.** The prepared corpus, repeated to ``--reindex-docs`` documents, through ``reindex``: the first
   run (a full build), a nightly run after
   ``--reindex-fraction`` of the documents were deleted, changed and added, the same input again (publishes
   nothing) and ``--full`` on it, with the reports' counts, partitions rewritten and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semhash_spark import codes as C  # noqa: E402
from semhash_spark.data import dataset as ds  # noqa: E402

# --------------------------------------------------------------------------------------------------- text corpora


def exact_jaccard_pairs(counts: sp.csr_matrix, ids: list[str], threshold: float, chunk: int = 2000) -> set:
    """Every pair with Jaccard(word sets) >= threshold: chunked sparse products (the exact reference)."""
    b = (counts > 0).astype(np.float32).tocsr()
    nnz = np.asarray(b.sum(axis=1)).ravel()
    bt = b.T.tocsc()
    out = set()
    for s in range(0, b.shape[0], chunk):
        inter = (b[s : s + chunk] @ bt).toarray()
        jac = inter / np.maximum(nnz[s : s + chunk, None] + nnz[None, :] - inter, 1)
        i, j = np.nonzero(jac >= threshold - 1e-9)
        keep = j > i + s
        for a, c in zip(i[keep] + s, j[keep]):
            out.add((min(ids[a], ids[c]), max(ids[a], ids[c])))
    return out


def scores(found: set, truth: set, injected: list) -> dict:
    hit = len(found & truth)
    out = {
        "pairs": len(found),
        "recall": round(hit / max(len(truth), 1), 4),
        "precision": round(hit / max(len(found), 1), 4),
    }
    per_rate = {}
    for rate in sorted({r for _, _, r in injected}):
        pairs = {(min(a, b), max(a, b)) for a, b, r in injected if r == rate}
        in_truth = pairs & truth
        per_rate[f"{rate:g}"] = {
            "injected": len(pairs),
            "in_truth": len(in_truth),
            "recall_in_truth": round(len(found & in_truth) / max(len(in_truth), 1), 4),
        }
    out["injected"] = per_rate
    return out


def corpus_texts(dataset: str, source: str) -> list[tuple[str, str]]:
    """Every readable record of a raw corpus with some text: ``(id, text)``."""
    from semhash_spark.data import corpora

    out, seen = [], set()
    for r in corpora.read_records(dataset, source):
        if r["error"] is None and r["text"] and r["id"] and r["id"] not in seen:
            seen.add(r["id"])
            out.append((r["id"], r["text"]))
    return out


def edited_text_copies(docs: list[tuple[str, str]], rates: list[float], copies: int, seed: int = 0):
    """For each rate, ``copies`` documents of 20 words or more with that fraction of their words replaced by
    words drawn from the corpus (as a user's edits and boilerplate drift); ``(copies, [(src, copy, rate)])``."""
    rng = np.random.default_rng(seed)
    pool = [w for _, t in docs[:2000] for w in t.split()]
    ok = [k for k, (_, t) in enumerate(docs) if len(t.split()) >= 20]
    out, injected = [], []
    for rate in rates:
        for n, src in enumerate(rng.choice(ok, copies, replace=False)):
            words = docs[src][1].split()
            hit = np.flatnonzero(rng.random(len(words)) < rate)
            for h in hit:
                words[h] = pool[int(rng.integers(0, len(pool)))]
            cid = f"copy-{rate:g}-{n}-{docs[src][0]}"
            out.append((cid, " ".join(words)))
            injected.append((docs[src][0], cid, rate))
    return out, injected


def generated_texts(base: list[tuple[str, str]], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` documents, each mixing the tokens of three random documents of a real corpus (half its words drawn
    from the first, 30% from the second, 20% from the third), as long as the first (20-150 tokens): the corpus's
    word statistics and topics at any size, and few near-duplicates by chance. (``semhash generate`` writes counts
    over the vocabulary, no text: the word sets that Jaccard is judged on need text.)"""
    from semhash_spark.data import corpora

    toks = [corpora.tokenize(t) for _, t in base]
    toks = [t for t in toks if t]
    vocab, flat = {}, []
    for t in toks:
        flat.extend(vocab.setdefault(w, len(vocab)) for w in t)
    words = np.array(list(vocab), dtype=object)
    flat = np.asarray(flat, np.int64)
    lens = np.array([len(t) for t in toks], np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    rng = np.random.default_rng(seed)
    src = rng.integers(0, len(toks), (n, 3))
    size = np.clip(lens[src[:, 0]], 20, 150)
    doc = np.repeat(np.arange(n), size)
    which = np.searchsorted([0.5, 0.8], rng.random(doc.size), side="right")  # 0: first, 1: second, 2: third
    s = src[doc, which]
    picked = flat[starts[s] + (rng.random(doc.size) * lens[s]).astype(np.int64)]
    bounds = np.concatenate([[0], np.cumsum(size)])
    return [(f"gen-{i}", " ".join(words[picked[bounds[i] : bounds[i + 1]]])) for i in range(n)]


def pooled_truth(sets: list[set], ids: list[str], injected: list, found: list[set], threshold: float) -> set:
    """Where all pairs cannot be checked (a million documents): the pairs of Jaccard >= threshold, checked exactly,
    among every pair inside an injected family (a source and its copies) and every pair some method found.
    Recall against it is an upper bound: a pair no method found and nobody injected is not counted."""
    family: dict[str, list[str]] = {}
    for a, b, _ in injected:
        family.setdefault(a, [a]).append(b)
    pool = {(min(x, y), max(x, y)) for g in family.values() for i, x in enumerate(g) for y in g[i + 1 :]}
    for f in found:
        pool |= f
    at = {d: k for k, d in enumerate(ids)}
    return {(a, b) for a, b in pool if jaccard_at_least(sets[at[a]], sets[at[b]], threshold)}


def jaccard_at_least(a: set, b: set, threshold: float) -> bool:
    """The exact check of a pair: Jaccard of the two word sets >= threshold."""
    inter = len(a & b)
    return bool(inter) and inter / (len(a) + len(b) - inter) >= threshold


def token_sets(docs: list[tuple[str, str]]) -> list[set]:
    """The word set of each document as ``prepare`` tokenises it (all tokens, not only the vocabulary)."""
    from semhash_spark.data import corpora

    return [set(corpora.tokenize(t)) for _, t in docs]


def exact_set_pairs(sets: list[set], ids: list[str], threshold: float, chunk: int = 2000) -> set:
    """Every pair whose word sets have Jaccard >= threshold: chunked sparse products (the exact reference)."""
    vocab: dict[str, int] = {}
    indptr, indices = [0], []
    for s in sets:
        indices.extend(vocab.setdefault(w, len(vocab)) for w in s)
        indptr.append(len(indices))
    m = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(sets), len(vocab)))
    return exact_jaccard_pairs(m, ids, threshold, chunk)


def datasketch_pairs(sets: list[set], ids: list[str], threshold: float, num_perm: int = 128) -> set:
    """datasketch: a MinHash of each word set (bulk), MinHashLSH at the threshold, each candidate checked on the
    exact Jaccard of the word sets."""
    from datasketch import MinHash, MinHashLSH

    encoded = [[w.encode("utf-8") for w in s] for s in sets]
    sketches = MinHash.bulk(encoded, num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, m in enumerate(sketches):
        lsh.insert(i, m, check_duplication=False)
    out = set()
    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j > i and jaccard_at_least(sets[i], sets[j], threshold):
                out.add((min(ids[i], ids[j]), max(ids[i], ids[j])))
    return out


def _semhash(*argv: str, cwd: Path, check: bool = True) -> tuple[dict, float]:
    """One ``semhash`` command in its own process (Spark start-up included): its JSON summary and wall time; with
    ``check=False`` a failed command gives ``{"error": its last line of stderr}`` (a dedup stopped by its budget)."""
    import subprocess

    exe = Path(sys.executable).with_name("semhash")
    t = time.time()
    p = subprocess.run([str(exe), *argv], capture_output=True, text=True, cwd=cwd)
    secs = time.time() - t
    if p.returncode != 0 and not check:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}, secs
    if p.returncode != 0:
        raise RuntimeError(f"semhash {' '.join(argv)} failed ({p.returncode}): {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), secs


def _read_pairs(out: Path) -> set:
    t = pq.read_table(out / "pairs", columns=["id_a", "id_b"])
    return set(zip(t.column("id_a").to_pylist(), t.column("id_b").to_pylist()))


def pcaitq_index(data: Path, index: Path, bits: int = 64) -> None:
    """An index of the dataset's documents with PCA-ITQ codes of their TF-IDF vectors (the project's baseline
    hasher), published as encode publishes one: for when no trained model is at hand."""
    import pandas as pd

    from semhash_spark.index import published as ix
    from semhash_spark.evaluation.evaluate import tfidf
    from semhash_spark.evaluation.hashing_baselines import PCAITQ

    split = ds.read_split(str(data), "train", columns=("id", "counts"))
    _, df, n = ds.read_vocab(str(data))
    x = tfidf(split.counts, ds.idf(df, n)).toarray()
    codes = PCAITQ(bits).fit(x).encode(x)
    version = ix.new_version_id()
    vp = ix.version_prefix(str(index), version)
    pdf = pd.DataFrame({"id": list(split.ids), "code": [c.tobytes() for c in codes], "address": C.prefix(codes, 16)})
    files = []
    for k in range(4):
        files += ix.write_shard(vp, 4, C.code_bytes(bits), pdf.iloc[k::4])
    ix.publish(str(index), version, ix.build_manifest(version, bits, 16, 4, files))


def run_text(args, name: str, dataset: str, source: str, work: Path) -> dict:
    """One corpus plus edited copies: prepare, train, encode (untimed, once); the exact answer; datasketch and
    ``semhash dedup --verify jaccard:T`` (automatic radius) timed side by side; then a nightly change of
    ``--nightly-fraction`` of the documents, re-indexed, deduplicated --since the first version and in full."""
    work.mkdir(parents=True, exist_ok=True)
    plans = args.plans.split(",")
    docs = corpus_texts(dataset, source)
    generated = name == "generated"
    if generated:
        docs = generated_texts(docs, args.generated_docs)
    rates = [float(x) for x in args.edit_rates.split(",")]
    copies, injected = edited_text_copies(docs, rates, args.copies // len(rates))
    docs = docs + copies
    ids = [d for d, _ in docs]
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t, "split": "train"}) + "\n" for i, t in docs))
    res: dict = {
        "corpus": name,
        "docs": len(docs),
        "injected": len(copies),
        "edit_rates": rates,
        "jaccard": args.jaccard,
    }
    data, model, index = work / "data", work / "model", work / "index"
    t = time.time()
    if not (data / ds.DATASET_FILE).exists():  # a --workdir of an earlier run keeps it
        _semhash("prepare", "--dataset", "jsonl", "--source", str(corpus), "--out", str(data), cwd=work)
    res["prepare_seconds"] = round(time.time() - t, 1)
    own_model = not args.model or (model / "model.json").exists()
    if args.codes == "pcaitq":
        t = time.time()
        if not index.exists():
            pcaitq_index(data, index)
        res["codes"] = "PCA-ITQ of TF-IDF (hashing_baselines), 64 bits"
        res["encode_seconds"] = round(time.time() - t, 1)
    elif not own_model:
        model = Path(args.model)
    elif not (model / "model.json").exists():
        t = time.time()
        _semhash(
            "train",
            "--data",
            str(data),
            "--bits",
            "64",
            "--out",
            str(model),
            "--no-progress",
            *sum((["--set", s] for s in args.train_set), []),
            cwd=work,
        )
        res["train_seconds"] = round(time.time() - t, 1)
    t = time.time()
    if args.codes == "pcaitq":
        t -= res["encode_seconds"]
    elif not own_model:  # another corpus's model: the corpus prepared with the model's words, as a nightly reindex does
        _semhash(
            "reindex",
            "--dataset",
            "jsonl",
            "--data",
            str(corpus),
            "--model",
            str(model),
            "--index",
            str(index),
            cwd=work,
        )
        res["model"] = f"{args.model} (trained on another corpus); index built by reindex --dataset jsonl"
    else:
        _semhash("encode", "--model", str(model), "--data", str(data), "--index", str(index), cwd=work)
    res["encode_seconds"] = round(time.time() - t, 1)
    print(f"{name}: {len(docs)} documents prepared, encoded ({res})", flush=True)

    sets = token_sets(docs)
    truth = None  # a generated corpus: pooled from the methods' answers after the runs (too many pairs to check all)
    if not generated:
        t = time.time()
        truth = exact_set_pairs(sets, ids, args.jaccard)
        res["exact"] = {"pairs": len(truth), "seconds": round(time.time() - t, 2)}
        print(f"{name}: exact all pairs: {len(truth)} with Jaccard >= {args.jaccard}", flush=True)

    rows, found_sets = [], []
    for rep in range(args.repeats):
        t = time.time()
        found = datasketch_pairs(sets, ids, args.jaccard)
        row = {
            "method": "datasketch MinHashLSH(0.7, 128) + exact check",
            "run": rep,
            "seconds": round(time.time() - t, 2),
        }
        rows.append(row)
        found_sets.append(found)
        print(f"{name}: {json.dumps(row)}", flush=True)
        for k, (plan, target) in enumerate((p, t) for t in args.target_recall for p in plans):
            out = work / f"dedup-{rep}" if k == 0 else work / f"dedup-{rep}-{plan}-{target:g}"
            summary, secs = _semhash(
                "dedup",
                "--index",
                str(index),
                "--data",
                str(data),
                "--verify",
                f"jaccard:{args.jaccard}",
                "--target-recall",
                str(target),
                *PLAN_ARGS[plan],
                *(["--calibration-sample", str(args.calibration_sample)] if args.calibration_sample else []),
                "--out",
                str(out),
                cwd=work,
                check=False,
            )
            if "error" in summary:  # stopped (e.g. over --max-pairs): the row says why, and scores nothing
                rows.append(
                    {
                        "method": f"semhash dedup ({plan}, target recall {target:g})",
                        "run": rep,
                        "seconds": round(secs, 2),
                    }
                    | summary
                )
                found_sets.append(None)
                print(f"{name}: {json.dumps(rows[-1])}", flush=True)
                continue
            found = _read_pairs(out)
            row = {
                "method": f"semhash dedup --verify jaccard (target recall {target:g}, {summary['plan']} plan"
                + (", --max-pairs 0)" if plan == "unbounded" else ")"),
                "run": rep,
                "seconds": round(secs, 2),
                "radius": summary["radius"],
                "calibration": summary.get("calibration"),
                "candidates": summary["candidates"],
                "job_seconds": summary["seconds"],
            }
            rows.append(row)
            found_sets.append(found)
            print(f"{name}: {json.dumps(row)}", flush=True)
    if truth is None:
        truth = pooled_truth(sets, ids, injected, [f for f in found_sets if f is not None], args.jaccard)
        res["pooled_truth"] = {"pairs": len(truth)}
    for row, found in zip(rows, found_sets):
        if found is None:
            continue
        row.update(scores(found, truth, injected))
        print(f"{name}: {json.dumps(row)}", flush=True)
    res["runs"] = rows

    if args.nightly_fraction <= 0:
        return res
    # nightly: a fraction of the documents edited, the corpus re-prepared with the model's vocabulary and re-indexed
    rng = np.random.default_rng(7)
    changed = set(rng.choice(len(docs), max(1, int(args.nightly_fraction * len(docs))), replace=False).tolist())
    pool = [w for _, t in docs[:2000] for w in t.split()]
    night = [
        (i, " ".join(w if rng.random() > 0.3 else pool[int(rng.integers(0, len(pool)))] for w in t.split()))
        if k in changed
        else (i, t)
        for k, (i, t) in enumerate(docs)
    ]
    corpus2 = work / "nightly.jsonl"
    corpus2.write_text("".join(json.dumps({"id": i, "text": t, "split": "train"}) + "\n" for i, t in night))
    v1 = json.loads((index / "CURRENT").read_text())["version"]
    rep2, secs = _semhash(
        "reindex", "--dataset", "jsonl", "--data", str(corpus2), "--model", str(model), "--index", str(index), cwd=work
    )
    night_data = work / "nightly-data"
    _semhash("prepare", "--dataset", "jsonl", "--source", str(corpus2), "--out", str(night_data), cwd=work)
    radius = str(next(r["radius"] for r in reversed(rows) if "radius" in r))
    common = ["dedup", "--index", str(index), "--data", str(night_data), "--verify", f"jaccard:{args.jaccard}"]
    res["nightly"] = {
        "changed_docs": len(changed),
        "reindex": {k: rep2.get(k) for k in ("added", "changed", "deleted", "seconds")},
    }
    for plan in plans:
        inc_out, full_out = work / f"inc-{plan}", work / f"full-{plan}"
        since = ["--since", v1, "--previous", str(work / f"dedup-{args.repeats - 1}")]
        inc, inc_secs = _semhash(*common, "--radius", radius, *since, *PLAN_ARGS[plan], "--out", str(inc_out), cwd=work)
        full, full_secs = _semhash(*common, "--radius", radius, *PLAN_ARGS[plan], "--out", str(full_out), cwd=work)
        res["nightly"][plan] = {
            "incremental": {
                "seconds": round(inc_secs, 2),
                "fresh_docs": inc.get("fresh_docs"),
                "candidates": inc["candidates"],
                "pairs": inc["pairs"],
            },
            "full": {"seconds": round(full_secs, 2), "candidates": full["candidates"], "pairs": full["pairs"]},
            "same_pairs": _read_pairs(inc_out) == _read_pairs(full_out),
        }
    print(f"{name}: nightly {json.dumps(res['nightly'])}", flush=True)
    return res


# ``semhash dedup`` options of each plan: the default (an index this small is paired on the driver) and Spark's
PLAN_ARGS = {"driver": [], "spark": ["--local-max-docs", "0"], "unbounded": ["--max-pairs", "0"]}


# --------------------------------------------------------------------------------------------------- scale part


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def synthetic_codes(start: int, stop: int) -> np.ndarray:
    """64-bit codes ``uint64[stop - start]`` for rows start..stop: random, and every row with i % 100 == 1 a copy of
    row i - 1 with (i // 100) % 4 bits flipped (planted near-duplicates)."""
    with np.errstate(over="ignore"):
        i = np.arange(start, stop, dtype=np.uint64)
        base = np.where(i % np.uint64(100) == 1, i - np.uint64(1), i)
        code = _splitmix(base)
        flips = ((i // np.uint64(100)) % np.uint64(4)).astype(np.int64)
        planted = i % np.uint64(100) == 1
        for k in range(3):  # flip up to three distinct bits, positions from another hash
            pos = (_splitmix(i * np.uint64(3) + np.uint64(k + 7)) % np.uint64(21)).astype(np.uint64) + np.uint64(21 * k)
            mask = np.where(planted & (flips > k), np.uint64(1) << pos, np.uint64(0))
            code ^= mask
    return code


def _gen_frames(frames):
    import pandas as pd

    for pdf in frames:
        ids = pdf["id"].to_numpy()
        if len(ids) == 0:
            continue
        lo, hi = int(ids.min()), int(ids.max()) + 1
        codes = synthetic_codes(lo, hi)[ids - lo]
        raw = codes.astype(">u8").tobytes()
        yield pd.DataFrame(
            {"id": [f"{x:010d}" for x in ids], "code": [raw[8 * k : 8 * k + 8] for k in range(len(ids))]}
        )


def brute_count(words: np.ndarray, radius: int) -> int:
    """Pairs i < j with popcount(w_i ^ w_j) <= radius: the full quadratic scan, numba-parallel."""
    return int(_brute_kernel()(words, radius))


_KERNEL = None


def _brute_kernel():
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(parallel=True, cache=False)
        def count(words, radius):
            n = words.shape[0]
            per = np.zeros(n, dtype=np.int64)
            for i in numba.prange(n):
                wi = words[i]
                c = 0
                for j in range(i + 1, n):
                    x = wi ^ words[j]
                    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
                    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
                    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
                    if ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)) <= radius:
                        c += 1
                per[i] = c
            return per.sum()

        _KERNEL = count
    return _KERNEL


def run_scale(spark, args, work: Path) -> dict:
    from semhash_spark.index import dedup

    out = {"bits": 64, "rows": []}
    # the brute-force pair rate, measured on a warm kernel
    sample = synthetic_codes(0, min(args.brute_rate_sample, 10**9))
    brute_count(sample[:1000], args.scale_radius)
    t = time.time()
    brute_count(sample, args.scale_radius)
    rate = (len(sample) * (len(sample) - 1) / 2) / (time.time() - t)
    out["brute_pairs_per_second"] = round(rate)
    print(f"brute force: {rate / 1e9:.2f} G pairs/s", flush=True)
    for entry in args.scale.split(","):
        n, _, r = entry.partition(":")
        n, radius = int(n), int(r) if r else args.scale_radius
        path = work / f"codes-{n}"
        n_files = max(2, n // 500_000)
        spark.range(0, n, numPartitions=n_files).select("id").mapInPandas(
            _gen_frames, "id string, code binary"
        ).write.mode("overwrite").parquet(str(path))
        codes_df = spark.read.parquet(str(path))
        if not out["rows"]:  # the session warm (Python workers, kernels loaded): not timed
            dedup.near_duplicate_pairs(codes_df.limit(10000), 64, radius, block_size=args.block_size)
        t = time.time()
        _, counts = dedup.near_duplicate_pairs(codes_df, 64, radius, block_size=args.block_size)
        spark_s = time.time() - t
        pairs = counts["pairs"]
        row = {
            "codes": n,
            "radius": radius,
            "spark_seconds": round(spark_s, 1),
            "pairs": pairs,
            "hot_buckets": counts["hot_buckets"],
        }
        if n <= args.brute_max:
            words = synthetic_codes(0, n)
            t = time.time()
            brute = brute_count(words, radius)
            row.update(
                {
                    "brute_seconds": round(time.time() - t, 1),
                    "brute_pairs": brute,
                    "agree": brute == pairs,
                    "brute_measured": True,
                }
            )
        else:
            row.update({"brute_seconds": round(n * (n - 1) / 2 / rate, 1), "brute_measured": False})
        row["speedup"] = round(row["brute_seconds"] / spark_s, 1)
        out["rows"].append(row)
        print(f"scale: {json.dumps(row)}", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------- reindex part


def replicate(data_dir: str, out: Path, n_docs: int, files: int = 16) -> None:
    """The prepared corpus repeated to ``n_docs`` documents (ids and content hashes suffixed with the copy number)."""
    src = pa.concat_tables([pq.read_table(f) for s in ds.SPLITS for f in ds.split_files(data_dir, s)])
    dest = out / ds.DOCS_DIR / "split=train"
    dest.mkdir(parents=True)
    for name in (ds.DATASET_FILE, ds.VOCAB_FILE):
        shutil.copy(Path(data_dir) / name, out / name)
    tables = []
    for rep in range(-(-n_docs // src.num_rows)):
        t = src.slice(0, min(src.num_rows, n_docs - rep * src.num_rows))
        for col in (ds.ID, ds.CONTENT_HASH):
            t = t.set_column(
                t.schema.get_field_index(col), col, pa.array([f"{x}#{rep}" for x in t.column(col).to_pylist()])
            )
        tables.append(t)
    table = pa.concat_tables(tables)
    per = -(-table.num_rows // files)
    for f in range(files):
        pq.write_table(table.slice(f * per, per), dest / f"part-{f:05d}.parquet")


def edit_dataset(src: Path, out: Path, fraction: float, seed: int = 0) -> dict:
    """Tonight's corpus: ``src`` with ``fraction`` of its documents deleted, changed and added (a third each)."""
    rng = np.random.default_rng(seed)
    shutil.copytree(src, out)
    files = [f for split in ds.SPLITS if ds.split_dir(out, split).is_dir() for f in ds.split_files(out, split)]
    tables = [pq.read_table(f).to_pylist() for f in files]
    n = sum(len(t) for t in tables)
    k = max(1, int(n * fraction / 3))
    everyone = [r["id"] for t in tables for r in t]
    picked = rng.choice(len(everyone), 3 * k, replace=False)
    delete = {everyone[i] for i in picked[:k]}
    change = {everyone[i] for i in picked[k : 2 * k]}
    add_from = {everyone[i] for i in picked[2 * k :]}
    added = []
    for f, t in zip(files, tables):
        keep = []
        for r in t:
            if r["id"] in add_from:
                added.append({**r, "id": "new-" + r["id"], "content_hash": "new-" + r["content_hash"]})
            if r["id"] in delete:
                continue
            if r["id"] in change:
                r = {
                    **r,
                    "word_counts": (np.frombuffer(r["word_counts"], "<f4") * 2).astype("<f4").tobytes(),
                    "content_hash": "edited-" + r["content_hash"],
                }
            keep.append(r)
        pq.write_table(pa.Table.from_pylist(keep, schema=ds.DOC_SCHEMA), f)
    pq.write_table(pa.Table.from_pylist(added, schema=ds.DOC_SCHEMA), files[0].parent / "part-added.parquet")
    return {"docs": n, "deleted": k, "changed": k, "added": k}


def run_reindex(spark, args, work: Path) -> dict:
    from semhash_spark.config import load_config
    from semhash_spark.index.reindex import reindex

    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    shutil.copytree(args.model, model, ignore=shutil.ignore_patterns("_train_state"))
    base = work / "base"
    replicate(args.data, base, args.reindex_docs)
    edits = edit_dataset(base, work / "tonight", args.reindex_fraction)
    cfg = load_config(None, [])
    index = str(work / "index")
    keys = (
        "published",
        "full",
        "reason",
        "added",
        "changed",
        "deleted",
        "unchanged",
        "partitions",
        "partitions_rewritten",
        "partitions_carried",
        "files_copied",
        "seconds",
    )
    out = {"edits": edits, "address_bits": cfg.index.address_bits, "partition_bits": cfg.index.partition_bits}
    tonight = work / "tonight"
    runs = (
        ("first run (full build)", base, False),
        ("nightly run", tonight, False),
        ("same input again", tonight, False),
        ("--full on the same input", tonight, True),
    )
    for name, data, full in runs:
        rep = reindex(spark, str(data), str(model), index, cfg, full=full)
        out[name] = {k: rep.get(k) for k in keys}
        print(f"reindex {name}: {json.dumps(out[name])}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="prepared 20 Newsgroups dataset (semhash prepare --dataset 20ng): re-index part")
    p.add_argument(
        "--model",
        help="a 64-bit document model: the re-index part's, and the text part's instead of one trained on each corpus",
    )
    p.add_argument(
        "--corpora",
        default="20ng,reuters21578",
        help="text part: raw corpora under SEMHASH_DATA_DIR, or 'generated' (--generated-docs mixed from one)",
    )
    p.add_argument(
        "--generated-docs",
        type=int,
        default=1_000_000,
        help="text part, corpus 'generated': documents mixed from --generated-from's (before the copies)",
    )
    p.add_argument("--generated-from", default="20ng", help="text part: the real corpus 'generated' draws on")
    p.add_argument(
        "--calibration-sample", type=int, help="text part: semhash dedup --calibration-sample (default: its own)"
    )
    p.add_argument("--train-set", action="append", default=[], help="text part: a train --set override")
    p.add_argument("--repeats", type=int, default=1, help="text part: timed runs of each method")
    p.add_argument(
        "--target-recall",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[0.9],
        help="text part: semhash dedup --target-recall, or several (0.8,0.9), each run with every plan",
    )
    p.add_argument(
        "--codes",
        choices=["model", "pcaitq"],
        default="model",
        help="text part: index codes from a trained model, or PCA-ITQ of TF-IDF (no training)",
    )
    p.add_argument("--nightly-fraction", type=float, default=0.01, help="text part: documents changed overnight")
    p.add_argument(
        "--plans",
        default="driver,spark",
        help="text part: the dedup runs timed (driver: the defaults, the driver plan for a small index; spark: "
        "--local-max-docs 0; unbounded: --max-pairs 0)",
    )
    p.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--copies", type=int, default=2000, help="injected copies in all (the rates share them)")
    p.add_argument("--edit-rates", default="0.02,0.05,0.1,0.2")
    p.add_argument("--jaccard", type=float, default=0.7, help="near-duplicate: Jaccard of word sets >= this")
    p.add_argument("--block-size", type=int, default=16384, help="scale part: near_duplicate_pairs' block_size")
    p.add_argument(
        "--scale",
        default="100000,1000000,10000000:1,10000000:2",
        help="code counts for the scale part, each N or N:RADIUS",
    )
    p.add_argument("--scale-radius", type=int, default=3, help="radius where --scale gives none")
    p.add_argument("--brute-max", type=int, default=200000, help="run the brute-force scan in full up to this size")
    p.add_argument("--brute-rate-sample", type=int, default=100000, help="codes used to measure the scan's rate")
    p.add_argument(
        "--reindex-docs", type=int, default=200000, help="re-index part: the corpus repeated to this many documents"
    )
    p.add_argument(
        "--reindex-fraction",
        type=float,
        default=0.0003,
        help="re-index part: fraction of documents deleted, changed and added (a third each)",
    )
    p.add_argument("--skip-text", action="store_true")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-reindex", action="store_true")
    args = p.parse_args()
    if not args.skip_reindex and not (args.data and args.model):
        p.error("--data and --model are needed for the re-index part (or --skip-reindex)")
    if not args.skip_text and args.codes == "pcaitq" and args.nightly_fraction > 0:
        p.error("the nightly run re-indexes with a model: use --codes model (or --nightly-fraction 0)")

    os.environ.setdefault("SEMHASH_DRIVER_MEMORY", "6g")
    from semhash_spark.io.spark import get_spark

    spark = None  # the text part runs every semhash command in its own process
    if not (args.skip_scale and args.skip_reindex):
        spark = get_spark("dedup-bench", master="local[2]", conf={"spark.sql.shuffle.partitions": "8"})
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dedup-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {"cpus": os.cpu_count(), "spark_master": "local[2]"},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        if not args.skip_text:
            root = Path(os.environ.get("SEMHASH_DATA_DIR", "/work/shared/data"))
            sources = {
                "20ng": root / "20newsgroups" / "20news-bydate.tar.gz",
                "reuters21578": root / "reuters21578" / "reuters21578.tar.gz",
            }
            for name in args.corpora.split(","):
                base = args.generated_from if name == "generated" else name
                results[name] = run_text(args, name, base, str(sources[base]), work / name)
        if not args.skip_reindex:
            results["reindex"] = run_reindex(spark, args, work / "reindex")
        if not args.skip_scale:
            results["scale"] = run_scale(spark, args, work / "scale")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

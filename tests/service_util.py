"""Builds a small published document index with its model copy, as the encode job lays it out (for service tests
and the service benchmarks). Nothing is trained: the autoencoder has fixed random weights, which is enough to
turn texts into codes the same way on both sides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from semhash_spark.models import checkpoint
from semhash_spark import codes as C
from semhash_spark.index import published as X
from semhash_spark.io import store
from semhash_spark.config import load_config
from semhash_spark.data.dataset import vocab_fingerprint
from semhash_spark.models.autoencoder import DeepAutoencoder


def word(i: int) -> str:
    """Letters-only vocabulary words (the tokeniser keeps letters only): 'zqaaa', 'zqaab', ..."""
    s = ""
    for _ in range(3):
        i, r = divmod(i, 26)
        s = chr(97 + r) + s
    return "zq" + s


def make_model(vocab_size: int, bits: int, seed: int) -> DeepAutoencoder:
    torch.manual_seed(seed)
    model = DeepAutoencoder([vocab_size, 16, bits])
    with torch.no_grad():  # spread the codes: larger random weights than the default init
        for layer in model.encoder:
            layer.weight.normal_(0.0, 3.0 / np.sqrt(layer.weight.shape[1]))
            layer.bias.zero_()
    return model.eval()


def make_docs(n: int, vocab_size: int, rng: np.random.Generator, topics: int = 12, length: int = 40):
    """Topic-mixture bags of words: ``(ids int32, counts float32)`` per document, ascending ids."""
    topic_words = rng.dirichlet(np.full(vocab_size, 0.05), size=topics)
    bags = []
    for _ in range(n):
        t = rng.integers(0, topics)
        counts = np.bincount(rng.choice(vocab_size, size=length, p=topic_words[t]), minlength=vocab_size)
        ids = np.flatnonzero(counts).astype(np.int32)
        bags.append((ids, counts[ids].astype(np.float32)))
    return bags


def text_of(bag) -> str:
    ids, counts = bag
    return " ".join(" ".join([word(int(i))] * int(c)) for i, c in zip(ids, counts))


def build_index(
    index_uri: str,
    *,
    n: int = 2000,
    vocab_size: int = 300,
    bits: int = 32,
    address_bits: int = 16,
    partition_bits: int = 4,
    seed: int = 0,
    tasks: int = 3,
    with_model: bool = True,
    model_seed: int = 7,
    address_model_bits: int | None = None,
    with_text: bool = False,
) -> dict:
    """Writes shards, the model copy and the manifest of a new version, then publishes it; returns what a test
    needs to check answers: version, ids, codes, bags, hasher. ``address_model_bits``: the addresses come from
    an address model of that many bits of its own (copied into ``address_model/``), not the codes' prefix.
    ``with_text``: the shards also keep each item's labels and snippet (``labels``/``snippets`` in the result)."""
    rng = np.random.default_rng(seed)
    words = [word(i) for i in range(vocab_size)]
    bags = make_docs(n, vocab_size, rng)
    cfg = load_config(None)
    model = make_model(vocab_size, bits, model_seed)
    version = X.new_version_id()
    vp = X.version_prefix(index_uri, version)
    model_uri = store.join(vp, "model")
    doc_freq = np.zeros(vocab_size, dtype=np.int64)
    for ids, _ in bags:
        doc_freq[ids] += 1
    vocab = {
        "words": words,
        "doc_freq": doc_freq.tolist(),
        "num_train_docs": n,
        "fingerprint": vocab_fingerprint(words),
    }
    checkpoint.save_model(model_uri, model, cfg, extra={"vocab": vocab})
    hasher = checkpoint.load_model(model_uri)
    dense = np.zeros((n, vocab_size), dtype=np.float32)
    for i, (ids, counts) in enumerate(bags):
        dense[i, ids] = counts
    codes = hasher.codes(dense)
    address_hasher, extra = None, {}
    if address_model_bits is not None:
        address_bits = address_model_bits
        checkpoint.save_model(
            store.join(vp, "address_model"),
            make_model(vocab_size, address_bits, model_seed + 1),
            cfg,
            extra={"vocab": vocab},
        )
        address_hasher = checkpoint.load_model(store.join(vp, "address_model"))
        addresses = C.prefix(address_hasher.codes(dense), address_bits)
        extra = {
            "address_model": {
                "uri": "test",
                "version": address_hasher.version,
                "path": "address_model",
                "bits": address_bits,
            }
        }
    else:
        addresses = C.prefix(codes, address_bits)
    ids = [f"doc-{seed}-{i}" for i in range(n)]
    pdf = pd.DataFrame(
        {
            "id": ids,
            "code": [bytes(r) for r in codes],
            "address": addresses,
            "word_ids": [b[0].astype("<i4").tobytes() for b in bags],
            "word_counts": [b[1].astype("<f4").tobytes() for b in bags],
        }
    )
    labels = [[f"class-{i % 5}"] + ([f"extra-{i % 3}"] if i % 2 else []) for i in range(n)]
    snippets = [None if i % 7 == 0 else " ".join(words[int(w)] for w in bags[i][0][:6]) for i in range(n)]
    if with_text:
        pdf["labels"], pdf["snippet"] = labels, snippets
    metas = []
    for chunk in np.array_split(np.arange(n), tasks):
        metas += X.write_shard(
            vp,
            partition_bits,
            C.code_bytes(bits),
            pdf.iloc[chunk],
            address_bits=address_bits if address_model_bits is not None else None,
        )
    if not with_model:
        store.delete_prefix(model_uri)
    manifest = X.build_manifest(
        version,
        bits,
        address_bits,
        partition_bits,
        metas,
        model={"uri": model_uri, "version": hasher.version},
        data={"fingerprint": "test"},
        **extra,
    )
    X.publish(index_uri, version, manifest)
    return {
        "version": version,
        "ids": ids,
        "codes": codes,
        "bags": bags,
        "hasher": hasher,
        "bits": bits,
        "manifest": manifest,
        "address_bits": address_bits,
        "partition_bits": partition_bits,
        "addresses": addresses,
        "address_hasher": address_hasher,
        **({"labels": labels, "snippets": snippets} if with_text else {}),
    }


def brute_force(db: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamming distances ``int32[len(q), len(db)]``."""
    return C.hamming(q, db)

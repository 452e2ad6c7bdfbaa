"""``semhash generate``: documents from a topic model fitted to real 20 Newsgroups posts, images from real CIFAR-10
images; deterministic per seed whatever the number of Spark tasks, readable by the project's loaders."""

from __future__ import annotations

import collections
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import missing_data

from semhash_spark.data import loader as data
from semhash_spark.data import dataset as ds
from semhash_spark.evaluation import evaluate as ev
from semhash_spark.config import GenerateConfig
from semhash_spark.data.generate import (
    _DOC_STREAM,
    BLOCK_DOCS,
    fit_topic_model,
    generate_block,
    generate_documents,
    generate_images,
    is_test,
    sample_counts,
    source_order,
)

CFG = GenerateConfig(topics=8, lda_iterations=5, docs_per_task=400)
SIZE = 1500


@pytest.fixture(scope="module")
def generated(spark, small_dataset, tmp_path_factory):
    """The small real corpus's generator, run twice with the same seed (default tasks, one task), once with another."""
    root = tmp_path_factory.mktemp("generated")
    reports = {
        "a": generate_documents(spark, str(small_dataset), str(root / "a"), CFG, size=SIZE, seed=3, min_files=2),
        "one_task": generate_documents(
            spark, str(small_dataset), str(root / "one_task"), CFG, size=SIZE, seed=3, min_files=2, num_tasks=1
        ),
        "seed4": generate_documents(spark, str(small_dataset), str(root / "seed4"), CFG, size=600, seed=4, min_files=2),
    }
    return root, reports


def _sorted_split(data_dir, split):
    d = ds.read_split(data_dir, split)
    order = np.argsort(d.ids)
    return d.ids[order], [d.labels[i] for i in order], d.counts[order], d.content_hash[order]


def test_same_seed_same_corpus_whatever_the_task_count(generated):
    root, reports = generated
    assert reports["a"]["tasks"] > 1 and reports["one_task"]["tasks"] == 1
    for split in ds.SPLITS:
        ids_a, labels_a, counts_a, hash_a = _sorted_split(root / "a", split)
        ids_b, labels_b, counts_b, hash_b = _sorted_split(root / "one_task", split)
        assert list(ids_a) == list(ids_b) and labels_a == labels_b and list(hash_a) == list(hash_b)
        assert (counts_a != counts_b).nnz == 0
    vocab = [json.loads((root / d / "vocab.json").read_text()) for d in ("a", "one_task")]
    assert vocab[0] == vocab[1]


def test_another_seed_another_corpus_and_sizes_are_prefixes(generated, small_dataset):
    root, _ = generated
    a = ds.read_split(root / "a", "train", columns=(ds.ID, "counts", ds.CONTENT_HASH))
    b = ds.read_split(root / "seed4", "train", columns=(ds.ID, "counts", ds.CONTENT_HASH))
    common = sorted(set(a.ids) & set(b.ids))
    assert len(common) > 200
    ha, hb = dict(zip(a.ids, a.content_hash)), dict(zip(b.ids, b.content_hash))
    assert sum(ha[i] == hb[i] for i in common) == 0
    # Document i depends only on (model, seed, i // BLOCK_DOCS): block 0 computed alone equals the Spark output.
    train = ds.read_split(small_dataset, "train", columns=(ds.LABELS, "counts"))
    model = fit_topic_model(train.counts, train.labels, ds.read_metadata(small_dataset)["counts"]["test"], CFG, 3)
    block = generate_block(model, 3, 0)
    assert len(block[ds.ID]) == BLOCK_DOCS
    both = {
        i: h
        for s in ds.SPLITS
        for i, h in zip(
            *(lambda d: (d.ids, d.content_hash))(ds.read_split(root / "a", s, columns=(ds.ID, ds.CONTENT_HASH)))
        )
    }
    assert [both[i] for i in block[ds.ID]] == block[ds.CONTENT_HASH]


def test_sample_counts_draws_the_generators_documents(small_dataset):
    """``sample_counts`` (documents as a count matrix, any batch size) is the generator's process: on a block's
    random stream it gives that block's documents, and large samples follow the model's expected class shares,
    lengths and word frequencies."""
    train = ds.read_split(small_dataset, "train", columns=(ds.LABELS, "counts"))
    model = fit_topic_model(train.counts, train.labels, ds.read_metadata(small_dataset)["counts"]["test"], CFG, 3)
    y, counts = sample_counts(model, np.random.default_rng([3, _DOC_STREAM, 2]), BLOCK_DOCS)
    block = generate_block(model, 3, 2)
    assert [list(model.classes[c]) for c in y] == block[ds.LABELS]
    assert (counts != ds.csr_from_binary(block[ds.WORD_IDS], block[ds.WORD_COUNTS], model.vocab_size)).nnz == 0

    n = 20_000
    y, counts = sample_counts(model, np.random.default_rng(0), n)
    assert counts.shape == (n, model.vocab_size) and counts.dtype == np.float32
    share = np.bincount(y, minlength=len(model.classes)) / n
    assert 0.5 * np.abs(share - model.class_prior).sum() < 0.02
    mean_len = np.array(
        [model.lengths[a:b].mean() for a, b in zip(model.length_offsets[:-1], model.length_offsets[1:])]
    )
    expected_len = float(model.class_prior @ mean_len)
    assert abs(counts.sum() / n / expected_len - 1) < 0.05
    # E[counts] = sum_c P(c) E[N | c] E[theta | c] @ topics, E[theta | c] = alpha_c / sum(alpha_c)
    words = (model.class_prior * mean_len) @ (model.alpha / model.alpha.sum(axis=1, keepdims=True)) @ model.topics
    got = np.asarray(counts.sum(axis=0)).ravel()
    tv = 0.5 * np.abs(got / got.sum() - words / words.sum()).sum()
    flat = 0.5 * np.abs(got / got.sum() - model.topics.mean(axis=0)).sum()  # ignoring the classes' priors
    assert tv < 0.03 and tv < flat / 3, (tv, flat)


def test_sizes_splits_and_labels_follow_the_source(generated, small_dataset):
    root, reports = generated
    src_meta = ds.read_metadata(small_dataset)
    n_test, n_train = src_meta["counts"]["test"], src_meta["counts"]["train"]
    meta = ds.read_metadata(root / "a")
    assert meta["counts"]["train"] + meta["counts"]["test"] == SIZE == reports["a"]["size"]
    assert meta["counts"]["test"] == SIZE * n_test // (n_train + n_test)  # the source's proportion, exactly
    assert is_test(np.arange(SIZE), n_test, n_train + n_test).sum() == meta["counts"]["test"]
    assert meta["vocab_size"] == src_meta["vocab_size"] and meta["vocab_fingerprint"] == src_meta["vocab_fingerprint"]
    src = collections.Counter(tuple(l) for l in ds.read_split(small_dataset, "train", columns=(ds.LABELS,)).labels)
    gen = collections.Counter(
        tuple(l) for s in ds.SPLITS for l in ds.read_split(root / "a", s, columns=(ds.LABELS,)).labels
    )
    assert set(gen) == set(src)
    for label, n in src.items():
        assert abs(gen[label] / SIZE - n / sum(src.values())) < 0.06, label


def test_written_format_reads_like_prepare_output(generated):
    root, _ = generated
    d = root / "a"
    words, doc_freq, n_train = ds.read_vocab(d)
    train = ds.read_split(d, "train")
    assert n_train == len(train) == data.count_rows(d, "train")
    assert np.array_equal(doc_freq, np.asarray((train.counts > 0).sum(axis=0)).ravel())
    lengths = pq.read_table(ds.split_files(d, "train")[0], columns=[ds.LENGTH]).column(0).to_numpy()
    first = ds.read_split(d, "train", columns=("counts",)).counts[: len(lengths)]
    assert np.array_equal(lengths, np.asarray(first.sum(axis=1)).ravel().astype(int))
    assert (train.counts.data > 0).all() and train.counts.shape[1] == len(words)
    # Petastorm: two shards together deliver every training document once.
    got = [
        i
        for shard in range(2)
        for b in data.iter_batches(d, "train", 64, cur_shard=shard, shard_count=2)
        for i in b.ids
    ]
    assert sorted(got) == sorted(train.ids)
    assert pq.read_table(d / ds.QUARANTINE_DIR).num_rows == 0


def test_generated_documents_keep_retrievable_topics(generated):
    """TF-IDF cosine ranks documents of the query's class first far above chance: the labels carry meaning."""
    root, _ = generated
    d = root / "a"
    train, test = ds.read_split(d, "train"), ds.read_split(d, "test")
    _, doc_freq, n = ds.read_vocab(d)
    res = ev.evaluate_methods(
        {"tfidf": ev.tfidf_method(train.counts, test.counts, ev.idf_from_doc_freq(doc_freq, n))},
        train.labels,
        test.labels,
    )["tfidf"]
    freq = np.array(list(collections.Counter(l[0] for l in train.labels).values())) / len(train)
    chance = float((freq**2).sum())
    assert res["precision_at_100"] > chance + 0.2, (res["precision_at_100"], chance)


def test_cli_generate_documents(spark, small_dataset, tmp_path, capsys):
    from semhash_spark.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "generate",
            "--kind",
            "documents",
            "--source",
            str(small_dataset),
            "--out",
            str(out),
            "--size",
            "300",
            "--seed",
            "1",
            "--set",
            "generate.topics=4",
            "--set",
            "generate.lda_iterations=2",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["command"] == "generate" and summary["kept"]["train"] + summary["kept"]["test"] == 300
    assert ds.read_metadata(out)["generator"]["topics"] == 4
    rc = main(["generate", "--kind", "documents", "--source", str(small_dataset), "--out", str(out), "--size", "0"])
    assert rc == 1 and "--size must be a positive number" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def image_folder(shared_data, tmp_path_factory):
    """6 train and 3 test real CIFAR-10 JPEGs of each of three classes, in the imagefolder layout."""
    archive = shared_data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        missing_data("no CIFAR-10 archive")
    want = {(s, c): n for c in ("airplane", "cat", "ship") for s, n in (("train", 6), ("test", 3))}
    root = tmp_path_factory.mktemp("cifar-small")
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) >= 3 and want.get((parts[-3], parts[-2]), 0) > 0:
                want[(parts[-3], parts[-2])] -= 1
                dest = root / parts[-3] / parts[-2] / parts[-1]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
            if not any(want.values()):
                break
    return root


def _all_images(d):
    out = {}
    for split in ("train", "test"):
        b = data.read_image_shard(d, split)
        out.update({i: (l, split, p) for i, l, p in zip(b.ids, b.labels, b.pixels)})
    return out


def test_images_are_transformed_copies_with_labels_kept(spark, image_folder, tmp_path):
    from semhash_spark.config import ImagesConfig
    from semhash_spark.data.image_sources import read_source
    from semhash_spark.data.images import decode_image

    icfg = ImagesConfig(files_per_split=2)
    src = [
        (r["label"], r["split"], decode_image(r["data"], r["shape"], icfg))
        for r in read_source("imagefolder", str(image_folder))
    ]
    size = 2 * len(src) + 5
    identity = GenerateConfig(max_shift=0, min_crop=1.0, noise_std=0.0, flip=False)
    rep = generate_images(
        spark, "imagefolder", str(image_folder), str(tmp_path / "id"), icfg, identity, size=size, seed=5, num_tasks=2
    )
    assert rep["kept"]["train"] + rep["kept"]["test"] == size and rep["source_images"] == len(src)
    got = _all_images(tmp_path / "id")
    assert len(got) == size
    order = source_order(len(src), 5)
    for j in range(size):  # image j copies source order[j mod n], same label and split; here untouched
        label, split, pixels = got[f"img-{j:09d}"]
        assert (label, split) == src[order[j % len(src)]][:2]
        assert np.array_equal(pixels, src[order[j % len(src)]][2])

    a = _all_images(tmp_path / "id")
    cfg = GenerateConfig()
    generate_images(
        spark, "imagefolder", str(image_folder), str(tmp_path / "a"), icfg, cfg, size=size, seed=5, num_tasks=1
    )
    generate_images(
        spark, "imagefolder", str(image_folder), str(tmp_path / "b"), icfg, cfg, size=size, seed=5, num_tasks=3
    )
    a, b = _all_images(tmp_path / "a"), _all_images(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k][2], b[k][2]) and a[k][:2] == b[k][:2] for k in a)
    # Transformed, yet each copy stays closer to its own source than to the other sources.
    own, other = [], []
    for j in range(size):
        x = a[f"img-{j:09d}"][2].astype(np.float32)
        d = [np.abs(x - s[2].astype(np.float32)).mean() for s in src]
        own.append(d[order[j % len(src)]])
        other.append(np.median(d))
    own, other = np.array(own), np.array(other)
    assert (own > 0).all()
    assert (own < other).mean() > 0.9

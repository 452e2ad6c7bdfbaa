"""One end-to-end run of the small pipeline through the `semhash` command, against a real local S3 server."""

from __future__ import annotations

import json
import pytest

from semhash_spark.cli import main


def _run(capsys, argv) -> dict:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.mark.slow
def test_prepare_train_encode_query_evaluate(spark, s3_server, small_corpus, tmp_path, capsys):
    data = "s3://semhash/e2e/data"
    model = "s3://semhash/e2e/model"
    index = "s3://semhash/e2e/index"
    prep = _run(
        capsys,
        [
            "prepare",
            "--dataset",
            "jsonl",
            "--source",
            str(small_corpus),
            "--out",
            data,
            "--set",
            "prepare.vocab_size=500",
            "--set",
            "prepare.files_per_split=2",
        ],
    )
    assert prep["kept"] == {"train": 400, "test": 160}
    assert sum(prep["quarantined"].values()) == 3

    train = _run(
        capsys,
        [
            "train",
            "--data",
            data,
            "--bits",
            "16",
            "--out",
            model,
            "--no-progress",
            "--set",
            "model.hidden=[64]",
            "--set",
            "pretrain.epochs=30",
            "--set",
            "pretrain.batch_size=20",
            "--set",
            "finetune.epochs=6",
            "--set",
            "finetune.batch_size=20",
            "--set",
            "finetune.lr=1e-3",
            "--set",
            "finetune.val_queries=100",
        ],
    )
    assert train["bits"] == 16 and train["world_size"] == 1

    enc = _run(
        capsys,
        [
            "encode",
            "--model",
            model,
            "--data",
            data,
            "--index",
            index,
            "--set",
            "index.address_bits=12",
            "--set",
            "index.partition_bits=4",
        ],
    )
    assert enc["count"] == 560 and 1 <= enc["partitions"] <= 16

    res = _run(
        capsys,
        ["query", "--index", index, "--text", "the goalie stopped the puck in the playoff game", "--k", "5", "--json"],
    )
    assert res["version"] == enc["version"] and len(res["results"][0]) == 5
    # The radius search on the ranking code, with radius = the 5th-nearest distance, holds the 5 nearest.
    near = _run(capsys, ["query", "--index", index, "--text", "orbit of the space shuttle", "--k", "5", "--json"])
    assert len(near["results"][0]) == 5
    radius = max(h["distance"] for h in near["results"][0])
    ball = _run(
        capsys, ["query", "--index", index, "--text", "orbit of the space shuttle", "--radius", str(radius), "--json"]
    )
    ball_ids = [h["id"] for h in ball["results"][0]]
    assert {h["id"] for h in near["results"][0]} <= set(ball_ids), (near["results"][0], ball["results"][0])
    assert len(ball_ids) == len(set(ball_ids))
    distances = [h["distance"] for h in ball["results"][0]]
    assert distances == sorted(distances)
    # Without an address model the address is the code's first bits: its ball of radius r holds every code
    # within r of the query's code, so it holds the radius search's results.
    addr = _run(
        capsys,
        ["query", "--index", index, "--text", "orbit of the space shuttle", "--address-radius", str(radius), "--json"],
    )
    assert set(ball_ids) <= {h["id"] for h in addr["results"][0]}
    rr = _run(
        capsys,
        ["query", "--index", index, "--text", "orbit of the space shuttle", "--k", "3", "--rerank", "tfidf", "--json"],
    )
    assert len(rr["results"][0]) == 3 and all("score" in h for h in rr["results"][0])

    plot = tmp_path / "pr.png"
    ev = _run(capsys, ["evaluate", "--model", model, "--data", data, "--json", "--plot", str(plot)])
    for key in ("bits", "precision_at_100", "map", "pr_curve", "baselines"):
        assert key in ev
    assert set(ev["baselines"]) >= {"tfidf", "lsa", "lsh"}
    assert plot.stat().st_size > 1000
    # Four balanced groups: chance is 0.25; the codes must find topical neighbours.
    assert ev["precision_at_100"] > 0.35, ev["precision_at_100"]


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--bits", "8", "--out", str(tmp_path / "m")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semhash train: error:")
    assert main(["train", "--data", "x", "--bits", "8", "--out", "y", "--set", "pretrain.nope=1"]) != 0
    assert "pretrain.nope" in capsys.readouterr().err

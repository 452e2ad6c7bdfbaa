"""The `semhash` command's shared plumbing: global flags on every subcommand, --config / --conf, sizes, usage errors,
defaults in help; and its output contract: exactly one JSON line on stdout, no Spark WARN noise on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from semhash_spark import cli

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_global_flags_before_and_after_the_subcommand():
    for argv in (
        ["-v", "--json", "rollback", "--index", "x", "--list"],
        ["rollback", "--index", "x", "--list", "-v", "--json"],
    ):
        a = parse(*argv)
        assert a.verbose and a.json and not a.quiet, argv
    a = parse("-q", "dedup", "--index", "x", "--radius", "2", "--out", "o")
    assert a.quiet and not a.verbose
    for name in cli.build_parser().command_parsers:  # every subcommand takes them
        text = cli.build_parser().command_parsers[name].format_help()
        assert all(f in text for f in ("--verbose", "--quiet", "--json")), name


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--version")
    assert e.value.code == 0 and re.fullmatch(r"semhash \S+\n", capsys.readouterr().out)


def test_config_and_spark_properties(tmp_path, caplog):
    yaml_file = tmp_path / "my.yaml"
    yaml_file.write_text("train:\n  seed: 3\n")
    a = parse(
        "encode",
        "--model",
        "m",
        "--data",
        "d",
        "--index",
        "i",
        "--config",
        str(yaml_file),
        "--conf",
        "spark.sql.shuffle.partitions=64",
        "--conf",
        "spark.executor.memory=4g",
    )
    assert a.config == str(yaml_file)
    assert cli._spark_conf(a) == {"spark.sql.shuffle.partitions": "64", "spark.executor.memory": "4g"}
    with caplog.at_level("WARNING"):
        old = parse("encode", "--model", "m", "--data", "d", "--index", "i", "--conf", str(yaml_file))
    assert old.config == str(yaml_file) and cli._spark_conf(old) == {}
    assert "deprecated" in caplog.text and "--config" in caplog.text
    with pytest.raises(SystemExit) as e:  # neither a property nor a file
        parse("encode", "--model", "m", "--data", "d", "--index", "i", "--conf", "no-such-thing")
    assert e.value.code == 2
    # every Spark job takes them, dedup too
    d = parse("dedup", "--index", "i", "--out", "o", "--conf", "spark.driver.memory=6g")
    assert cli._spark_conf(d) == {"spark.driver.memory": "6g"}


@pytest.mark.parametrize(
    "text,want",
    [
        ("1073741824", 1 << 30),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("2GiB", 2 << 30),
        ("1.5k", 1536),
        ("64mb", 64 << 20),
    ],
)
def test_sizes(text, want):
    assert cli.parse_size(text) == want
    assert parse("serve", "--index", "x", "--cache-bytes", text).cache_bytes == want


def test_bad_sizes_and_missing_choices_are_usage_errors(capsys):
    for argv, says in [
        (["serve", "--index", "x", "--cache-bytes", "lots"], "not a size: 'lots'"),
        (["rollback", "--index", "x"], "one of the arguments --version --previous --list"),
        (["query", "--text", "hello"], "give --index INDEX_URI"),
    ]:
        assert pytest.raises(SystemExit, cli.main, argv).value.code == 2, argv
        err = capsys.readouterr().err
        assert says in err and "usage: semhash" in err, (argv, err)


def test_help_shows_defaults():
    p = cli.build_parser().command_parsers
    assert "(default: 8080)" in p["serve"].format_help() or "default: 8080" in p["serve"].format_help()
    assert "(default: local)" in p["train"].format_help()
    assert "(default: None)" not in "".join(sp.format_help() for sp in p.values())


def test_stdout_carries_only_the_json_line(monkeypatch, capfd):
    """What library code, native code or a child process writes to stdout during a command lands on stderr."""

    def noisy(args):
        print("Cache cleanup complete.")  # as Petastorm does
        os.write(1, b"native write\n")
        subprocess.run([sys.executable, "-c", "print('child process')"], check=True)
        return {"ok": True}

    monkeypatch.setattr(cli, "cmd_rollback", noisy)
    assert cli.main(["rollback", "--index", "x", "--list"]) == 0
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["ok"] is True, out
    for text in ("Cache cleanup complete.", "native write", "child process"):
        assert text in err


def _cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}


@pytest.mark.slow
def test_train_prints_one_json_line(small_dataset, tmp_path):
    """`semhash train ... | jq .`: stdout is one JSON document, whatever Petastorm and torch print."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semhash_spark.cli",
            "train",
            "--data",
            str(small_dataset),
            "--bits",
            "16",
            "--out",
            str(tmp_path / "model"),
            "--set",
            "model.hidden=[32]",
            "--set",
            "pretrain.epochs=1",
            "--set",
            "finetune.epochs=1",
            "--set",
            "finetune.val_queries=50",
        ],
        capture_output=True,
        text=True,
        env=_cli_env(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # the whole of stdout parses
    assert proc.stdout.count("\n") == 1 and doc["command"] == "train" and doc["bits"] == 16


@pytest.mark.slow
def test_prepare_20_newsgroups_stderr_has_no_spark_warn(shared_data, tmp_path):
    """A default `semhash prepare` of 20 Newsgroups: no Spark banner or WARN line on stderr, one JSON line out."""
    archive = shared_data / "20newsgroups" / "20news-bydate.tar.gz"
    if not archive.is_file():
        pytest.skip("no 20 Newsgroups archive")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semhash_spark.cli",
            "prepare",
            "--dataset",
            "20ng",
            "--source",
            str(archive),
            "--out",
            str(tmp_path / "20ng"),
        ],
        capture_output=True,
        text=True,
        env=_cli_env(),
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["kept"]["train"] > 10000
    noise = [
        line
        for line in proc.stderr.splitlines()
        if re.search(r"\bWARN\b|log4j|Setting default log level|NativeCodeLoader", line)
    ]
    assert not noise, "\n".join(noise[:20])


def test_evaluate_baselines_flag():
    known = ("tfidf", "lsa", "lsh")
    pick = lambda text: cli._baselines(parse("evaluate", "--model", "m", "--data", "d", "--baselines", text), known)  # noqa: E731
    assert pick("all") == known and pick("none") == () and pick("lsa, tfidf") == ("lsa", "tfidf")
    assert cli._baselines(parse("evaluate", "--model", "m", "--data", "d"), known) == known  # default: all
    with pytest.raises(ValueError, match=r"unknown \['pcah'\].*choose from tfidf, lsa, lsh"):
        pick("tfidf,pcah")

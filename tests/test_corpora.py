"""Readers and tokeniser on the real corpora, and bad JSON Lines input written to a temporary folder."""

from __future__ import annotations

import collections
import gzip
import json
import tarfile

import pytest

from semhash_spark.data import corpora

# per class, classes in name order (PROVENANCE.md, equal to scikit-learn's)
NG_TRAIN_PER_CLASS = [
    480,
    584,
    591,
    590,
    578,
    593,
    585,
    594,
    598,
    597,
    600,
    595,
    591,
    594,
    593,
    599,
    546,
    564,
    465,
    377,
]
NG_TEST_PER_CLASS = [319, 389, 394, 392, 385, 395, 390, 396, 398, 397, 399, 396, 393, 396, 394, 398, 364, 376, 310, 251]


def _ng_archive(shared_data):
    return shared_data / "20newsgroups" / "20news-bydate.tar.gz"


def _reuters_archive(shared_data):
    return shared_data / "reuters21578" / "reuters21578.tar.gz"


# ---------------------------------------------------------------------------------------------------- tokeniser
def test_tokenize_letters_only_lowercase_length_and_stop_words():
    text = "The QUICK brown-fox, x2y jumped_over 42 dogs' e-mail a I naïve " + "z" * 31
    assert corpora.tokenize(text) == ["quick", "brown", "fox", "jumped", "dogs", "mail", "naïve"]
    assert corpora.tokenize("quick brown jumped", min_len=5, max_len=5) == ["quick", "brown"]
    assert corpora.tokenize("z" * 30 + " " + "y" * 31) == ["z" * 30]
    assert corpora.tokenize("", 2, 30) == []


def test_stop_words_are_lowercase_letters_and_cover_common_words():
    assert all(w.isalpha() and w.islower() for w in corpora.STOP_WORDS)
    assert {"the", "and", "of", "to", "is", "don", "would"} <= corpora.STOP_WORDS
    # topic words of the corpora must survive (Reuters has an "interest" category)
    assert not {"interest", "money", "computer", "system", "god"} & corpora.STOP_WORDS


def test_error_kind_is_the_prefix():
    assert corpora.error_kind("invalid json: a.jsonl:3: Expecting value") == "invalid json"


# ---------------------------------------------------------------------------------------------------- 20 Newsgroups
def test_20ng_archive_counts_labels_and_ids(shared_data):
    split_counts = collections.Counter()
    per_class = {"train": collections.Counter(), "test": collections.Counter()}
    ids = set()
    for r in corpora.read_records("20ng", _ng_archive(shared_data)):
        assert r["error"] is None and r["text"]
        group = r["id"].split("/")[0]
        assert r["labels"] == [group]
        per_class[r["split"]][group] += 1
        split_counts[r["split"]] += 1
        ids.add(r["id"])
    assert split_counts == {"train": 11314, "test": 7532}
    assert len(ids) == 18846
    assert [per_class["train"][g] for g in sorted(per_class["train"])] == NG_TRAIN_PER_CLASS
    assert [per_class["test"][g] for g in sorted(per_class["test"])] == NG_TEST_PER_CLASS


def test_20ng_latin1_and_strip_headers(shared_data):
    first = next(corpora.read_records("20ng", _ng_archive(shared_data)))
    stripped = next(corpora.read_records("20ng", _ng_archive(shared_data), strip_headers=True))
    assert first["id"] == stripped["id"] == "alt.atheism/49960"
    assert first["text"].startswith("From: ") and "Subject:" in first["text"]
    assert "Subject:" not in stripped["text"][:200] and first["text"].endswith(stripped["text"])
    # a post with non-ASCII bytes decodes as latin-1 (no replacement characters)
    non_ascii = next(r for r in corpora.read_records("20ng", _ng_archive(shared_data)) if not r["text"].isascii())
    assert "\ufffd" not in non_ascii["text"]


@pytest.mark.slow  # extracts the whole 20 Newsgroups archive: tens of seconds
def test_20ng_extracted_folder_reads_like_the_archive(shared_data, tmp_path):
    wanted = {"sci.space", "rec.autos"}
    with tarfile.open(_ng_archive(shared_data)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/")[1] in wanted]
        tar.extractall(tmp_path, members=members, filter="data")
    units = corpora.input_units("20ng", tmp_path)
    assert [u.split("/")[-2:] for u in units] == [
        ["20news-bydate-test", "rec.autos"],
        ["20news-bydate-test", "sci.space"],
        ["20news-bydate-train", "rec.autos"],
        ["20news-bydate-train", "sci.space"],
    ]
    from_folder = {r["id"]: r for r in corpora.read_records("20ng", tmp_path)}
    from_archive = {
        r["id"]: r for r in corpora.read_records("20ng", _ng_archive(shared_data)) if r["labels"][0] in wanted
    }
    assert len(from_folder) == 594 + 593 + 396 + 394
    assert {k: (r["text"], r["split"], r["labels"]) for k, r in from_folder.items()} == {
        k: (r["text"], r["split"], r["labels"]) for k, r in from_archive.items()
    }


# ---------------------------------------------------------------------------------------------------- Reuters-21578
def test_reuters_modapte_counts_and_labels(shared_data):
    counts = collections.Counter()
    labelled = collections.Counter()
    topics = set()
    ids = set()
    for r in corpora.read_records("reuters21578", _reuters_archive(shared_data)):
        assert r["error"] is None
        counts[r["split"]] += 1
        ids.add(r["id"])
        if r["split"] is None:
            assert r["text"] is None  # skipped: not in ModApte
        elif r["labels"]:
            labelled[r["split"]] += 1
            topics.update(r["labels"])
    assert counts == {"train": 9603, "test": 3299, None: 21578 - 9603 - 3299}
    assert ids == {str(i) for i in range(1, 21579)}
    assert labelled == {"train": 7775, "test": 3019}  # PROVENANCE.md: with >= 1 topic
    assert len(topics) <= 120 and {"earn", "acq", "crude", "interest"} <= topics


def test_reuters_text_title_body_entities_and_unprocessed_stories(shared_data):
    docs = {}
    for r in corpora.read_records("reuters21578", _reuters_archive(shared_data)):
        if r["id"] in {"1", "5", "8", "99"}:
            docs[r["id"]] = r
        if len(docs) == 4:
            break
    assert docs["1"]["text"].startswith("BAHIA COCOA REVIEW\nShowers continued") and docs["1"]["labels"] == ["cocoa"]
    assert docs["5"]["labels"] == ["grain", "wheat", "corn", "barley", "oat", "sorghum"]
    assert docs["8"]["text"].startswith("USX <X> DEBT")  # &lt;X&gt; resolved
    assert docs["99"]["text"].startswith("FEDERAL RESERVE WEEKLY REPORT")  # TYPE="UNPROC": no TITLE/BODY
    assert all("&#" not in d["text"] and "&lt;" not in d["text"] for d in docs.values())
    assert docs["8"]["source"].endswith("reut2-000.sgm#NEWID=8")


def test_reuters_sgm_folder_and_malformed_blocks(shared_data, tmp_path):
    with tarfile.open(_reuters_archive(shared_data)) as tar:
        tar.extractall(tmp_path, members=[tar.getmember("reuters21578/reut2-021.sgm")], filter="data")
    recs = list(corpora.read_records("reuters21578", tmp_path))
    assert len(recs) == 578 and recs[0]["id"] == "21001" and recs[-1]["id"] == "21578"
    sgml = (
        '<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" NEWID="7"><TOPICS><D>acq</D></TOPICS>'
        "<TEXT><TITLE>A &amp; B</TITLE><BODY>merger \xe9</BODY></TEXT></REUTERS>"
        '<REUTERS TOPICS="YES" LEWISSPLIT="TEST"><TEXT><BODY>no id</BODY></TEXT></REUTERS>'
        '<REUTERS TOPICS="YES" LEWISSPLIT="TEST" NEWID="9"><TEXT>&#3;</TEXT></REUTERS>'
        '<REUTERS TOPICS="NO" LEWISSPLIT="TRAIN" NEWID="10"><TEXT><BODY>x</BODY></TEXT></REUTERS>'
    )
    r = list(corpora.parse_reuters_sgml(sgml, "t.sgm"))
    assert r[0]["text"] == "A & B\nmerger \xe9" and r[0]["split"] == "train" and r[0]["labels"] == ["acq"]
    assert r[1]["error"].startswith("missing id:") and r[1]["id"] is None
    assert r[2]["error"].startswith("missing text:") and r[2]["id"] == "9"
    assert r[3]["split"] is None and r[3]["error"] is None


# ---------------------------------------------------------------------------------------------------- JSON Lines
def _write_lines(path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_jsonl_good_and_bad_lines_never_raise(tmp_path):
    good = {"id": "a", "text": "Rockets reach orbit", "labels": ["space"], "split": "test"}
    lines = [
        json.dumps(good).encode(),  # 1 good
        b"",  # 2 blank: not a record
        b"{not json",  # 3
        '{"id": "b", "text": "caf\xe9"}'.encode("latin-1"),  # 4 undecodable utf-8
        json.dumps({"text": "no id"}).encode(),  # 5
        json.dumps({"id": 5, "text": "int id"}).encode(),  # 6
        json.dumps({"id": "c"}).encode(),  # 7
        json.dumps({"id": "d", "text": ["x"]}).encode(),  # 8
        json.dumps({"id": "e", "text": "t", "labels": "space"}).encode(),  # 9
        json.dumps({"id": "f", "text": "t", "split": "dev"}).encode(),  # 10
        b"[1, 2]",  # 11
        json.dumps({"id": "g", "text": "no split, no labels"}).encode(),  # 12 good
    ]
    _write_lines(tmp_path / "c.jsonl", lines)
    recs = list(corpora.read_records("jsonl", tmp_path / "c.jsonl", test_fraction=0.5))
    assert len(recs) == 11
    kinds = [corpora.error_kind(r["error"]) if r["error"] else None for r in recs]
    assert kinds == [
        None,
        "invalid json",
        "undecodable utf-8",
        "missing id",
        "bad id",
        "missing text",
        "bad text",
        "bad labels",
        "bad split",
        "invalid json",
        None,
    ]
    assert set(kinds) - {None} <= set(corpora.ERROR_KINDS)
    assert recs[0] == {**good, "source": "c.jsonl:1", "error": None}
    assert "c.jsonl:3" in recs[1]["error"] and recs[1]["text"] == "{not json"
    assert "c.jsonl:10" in recs[8]["error"] and recs[8]["id"] == "f"
    assert recs[-1]["labels"] == [] and recs[-1]["split"] == corpora.hash_split("g", 0.5)


def test_jsonl_folder_with_gzip_and_truncated_gzip(tmp_path):
    rows = [{"id": f"d{i}", "text": f"doc {i}", "labels": []} for i in range(200)]
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:100])
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[100:]))
    (tmp_path / "notes.txt").write_text("ignored")
    good = (tmp_path / "b.jsonl.gz").read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl.gz").write_bytes(good[: len(good) // 2])  # truncated
    units = corpora.input_units("jsonl", tmp_path)
    assert [u.rsplit("/", 1)[1] for u in units] == ["a.jsonl", "b.jsonl.gz", "c.jsonl.gz"]
    recs = list(corpora.read_records("jsonl", tmp_path))
    ok = [r for r in recs if r["error"] is None]
    bad = [r for r in recs if r["error"] is not None]
    assert [r["id"] for r in ok[:200]] == [f"d{i}" for i in range(100, 200)] + [f"d{i}" for i in range(100)]
    assert len(bad) == 1 and bad[0]["error"].startswith("unreadable file: c.jsonl.gz:")


def test_hash_split_is_deterministic_and_near_the_fraction():
    ids = [f"doc-{i}" for i in range(5000)]
    splits = [corpora.hash_split(i, 0.2) for i in ids]
    assert splits == [corpora.hash_split(i, 0.2) for i in ids]
    assert 0.18 < splits.count("test") / len(ids) < 0.22
    assert {corpora.hash_split(i, 0.0) for i in ids} == {"train"}


def test_input_units_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'rcv1'"):
        corpora.input_units("rcv1", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        corpora.input_units("jsonl", tmp_path / "missing")
    assert corpora.input_units("jsonl", tmp_path) == []
    assert corpora.input_units("reuters21578", tmp_path) == []


def test_token_patterns():
    from semhash_spark.data.corpora import tokenize

    text = "Upgrading my 486 to X11R5 and Win3.1: the_best 3D card"
    assert tokenize(text) == ["upgrading", "win", "best", "card"]
    assert tokenize(text, tokens="alnum") == ["upgrading", "486", "x11r5", "win3", "best", "3d", "card"]
    with pytest.raises(ValueError, match="unknown token pattern 'words'"):
        tokenize(text, tokens="words")


def test_the_model_config_takes_the_datasets_tokenisation():
    from semhash_spark.config import load_config
    from semhash_spark.training.fit import with_dataset_prepare

    cfg = load_config(None)
    assert with_dataset_prepare(cfg, {"prepare": {"tokens": "alnum", "min_token_len": 3}}).prepare.tokens == "alnum"
    legacy = with_dataset_prepare(load_config(None, ["prepare.tokens=alnum"]), {"prepare": {"min_token_len": 2}})
    assert legacy.prepare.tokens == "letters"  # written before the option existed: letters-only
    assert with_dataset_prepare(cfg, {}) is cfg

"""Corpus readers and the tokeniser: 20 Newsgroups, Reuters-21578 (ModApte) and JSON Lines.

Every reader is a generator of plain record dicts, one per document, in a fixed order::

    {"id": str | None, "text": str | None, "labels": list[str], "split": "train" | "test" | None,
     "source": str, "error": str | None}

* ``split`` is ``None`` for a record the corpus's standard split does not use (Reuters documents outside
  ModApte); the prepare job counts these as *skipped*, it neither keeps nor quarantines them.
* ``error`` is set when the input is unusable (bad JSON, undecodable bytes, a missing or ill-typed field). It
  always reads ``"<kind>: <detail>"`` where ``<kind>`` is one of :data:`ERROR_KINDS`, and the detail names the
  file and line. For such records ``text`` holds an excerpt of the raw input (or ``None``). Readers never raise
  on bad records; they raise only when a whole source cannot be opened.
* ``source`` says where the record came from (``archive:member``, ``file:line``, ``file#NEWID``).

Readers stream: one document (one Reuters ``.sgm`` file, one JSONL line) is in memory at a time, so the
prepare job can feed corpora of any size into Spark in chunks. Sources with several files can be split into
independent *units* (:func:`input_units`) that executors read in parallel with :func:`read_unit`.

A source may be an ``s3://`` object or prefix laid out like a local file or folder: its units are object URIs
(or, for extracted 20 Newsgroups, ``.../20news-bydate-<split>/<group>`` prefixes), read through
:mod:`semhash_spark.io.store` by whichever process reads the unit (an executor on a cluster): a file unit is
downloaded to a temporary file of the same name and read as a local one, so records (ids, ``source``) are the
same as from a local copy.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator

from semhash_spark.io import store

log = logging.getLogger(__name__)

DATASETS = ("20ng", "reuters21578", "jsonl")
SPLITS = ("train", "test")
ERROR_KINDS = (
    "unreadable file",
    "undecodable utf-8",
    "invalid json",
    "missing id",
    "bad id",
    "missing text",
    "bad text",
    "bad labels",
    "bad split",
)
EXCERPT_CHARS = 200

# English stop words: NLTK's list (Porter/Snowball lineage) with the apostrophe forms dropped, because tokens
# are letters only ("don't" -> "don", "t"), plus a few frequent modal and filler words; see below for the rest.
STOP_WORDS: frozenset[str] = frozenset(
    """
a about above after again against ain all also am an and any are aren as at be because been before being below
between both but by can could couldn d did didn do does doesn doing don down during each few for from further
had hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it its
itself just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once only or other our
ours ourselves out over own re s same shan she should shouldn so some such t than that the their theirs them
themselves then there these they this those through to too under until up us ve very was wasn we were weren
what when where which while who whom why will with won would wouldn y you your yours yourself yourselves
""".split()
) | frozenset(
    """
across afterwards almost alone along already although always among amongst another anyhow anyone anything
anyway anywhere around back became become becomes becoming beforehand behind beside besides beyond cannot cant
co con couldnt de due eg eight either eleven else elsewhere enough etc even ever every everyone everything
everywhere except fifteen fifty find first five former formerly forty found four get give go hasnt hence
hereafter hereby herein hereupon however hundred ie inc indeed keep last latter latterly least less ltd made
many may meanwhile might mine moreover mostly much must namely neither never nevertheless next nine nobody none
noone nothing nowhere often one onto others otherwise per perhaps please put rather see seem seemed seeming
seems several since sincere six sixty somehow someone something sometime sometimes somewhere still take ten
thence thereafter thereby therefore therein thereupon third though three throughout thru thus together toward
towards twelve twenty two un upon via well whatever whence whenever whereafter whereas whereby wherein
whereupon wherever whether whither whoever whole whose within without yet
""".split()
)
# The second part is the function words of the Glasgow list (scikit-learn's ENGLISH_STOP_WORDS), without its
# content words (bill, call, fire, interest, system, name, part, show, side, top, ...): generic words that would
# otherwise fill a fifth of a 2000-word vocabulary and drown the topical ones.

TOKEN_PATTERNS = {
    "letters": re.compile(r"[^\W\d_]+"),  # runs of letters (any script); digits, '_' and punctuation split tokens
    "alnum": re.compile(r"[^\W_]+"),  # runs of letters and digits ("x11", "486", "3d"); '_' and punctuation split
}


def tokenize(
    text: str, min_len: int = 2, max_len: int = 30, stop_words: frozenset[str] = STOP_WORDS, tokens: str = "letters"
) -> list[str]:
    """Lower-cases ``text`` and returns its tokens (``tokens``: a :data:`TOKEN_PATTERNS` name) of length in
    [min_len, max_len], minus stop words."""
    try:
        pattern = TOKEN_PATTERNS[tokens]
    except KeyError:
        raise ValueError(f"unknown token pattern {tokens!r}; use one of {sorted(TOKEN_PATTERNS)}") from None
    return [w for w in pattern.findall(text.lower()) if min_len <= len(w) <= max_len and w not in stop_words]


def snippet(text: str | None, words: int = 30, chars: int = 200) -> str | None:
    """The first ``words`` words of ``text`` (whitespace collapsed), cut to ``chars`` characters: what a person
    sees beside a hit. None for no text or ``words`` <= 0 (snippets off)."""
    if text is None or words <= 0 or chars <= 0:
        return None
    out = " ".join(text.split(maxsplit=words)[:words])
    return out[:chars]


def _record(
    id_: str | None, text: str | None, labels: list[str], split: str | None, source: str, error: str | None = None
) -> dict[str, Any]:
    return {"id": id_, "text": text, "labels": labels, "split": split, "source": source, "error": error}


def _excerpt(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return raw[:EXCERPT_CHARS]


def _open_tar(path: Path) -> tarfile.TarFile:
    """A streaming reader of a .tar.gz (or plain .tar); ValueError naming the file when it is not one."""
    try:
        return tarfile.open(path, mode="r|*")
    except tarfile.TarError as e:
        raise ValueError(f"{str(path)!r} is not a tar or tar.gz archive ({e})") from None


# ---------------------------------------------------------------------------------------------------- 20 Newsgroups
_NG_ARCHIVE = "20news-bydate.tar.gz"
_NG_SPLIT_DIRS = {"20news-bydate-train": "train", "20news-bydate-test": "test"}


def strip_newsgroup_header(text: str) -> str:
    """Drops the header block of a Usenet post (everything up to the first blank line)."""
    _, sep, body = text.partition("\n\n")
    return body if sep else text


def _ng_record(split_dir: str, group: str, name: str, data: bytes, source: str, strip_headers: bool) -> dict:
    text = data.decode("latin-1")  # 20 Newsgroups is latin-1; every byte decodes
    if strip_headers:
        text = strip_newsgroup_header(text)
    return _record(f"{group}/{name}", text, [group], _NG_SPLIT_DIRS[split_dir], source)


def read_20ng_archive(path: str | Path, strip_headers: bool = False) -> Iterator[dict]:
    """Streams ``20news-bydate.tar.gz``: ``20news-bydate-{train,test}/<group>/<file>``, in archive order."""
    path = Path(path)
    with _open_tar(path) as tar:
        for member in tar:
            parts = member.name.strip("/").split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in _NG_SPLIT_DIRS:
                continue
            f = tar.extractfile(member)
            assert f is not None
            yield _ng_record(parts[0], parts[1], parts[2], f.read(), f"{path.name}:{member.name}", strip_headers)


def read_20ng_group_dir(group_dir: str | Path, strip_headers: bool = False) -> Iterator[dict]:
    """Reads one extracted ``20news-bydate-<split>/<group>/`` folder, files in name order."""
    group_dir = Path(group_dir)
    split_dir = group_dir.parent.name
    if split_dir not in _NG_SPLIT_DIRS:
        raise ValueError(f"{str(group_dir)!r} is not inside a 20news-bydate-train or 20news-bydate-test folder")
    for f in sorted(group_dir.iterdir()):
        if f.is_file():
            yield _ng_record(
                split_dir,
                group_dir.name,
                f.name,
                f.read_bytes(),
                f"{split_dir}/{group_dir.name}/{f.name}",
                strip_headers,
            )


def _20ng_units(source: Path) -> list[str]:
    if source.is_file():
        return [str(source)]
    groups = [
        g for d in sorted(_NG_SPLIT_DIRS) if (source / d).is_dir() for g in sorted((source / d).iterdir()) if g.is_dir()
    ]
    if groups:
        return [str(g) for g in groups]
    if (source / _NG_ARCHIVE).is_file():
        return [str(source / _NG_ARCHIVE)]
    return []


# ---------------------------------------------------------------------------------------------------- Reuters-21578
_REUTERS_ARCHIVE = "reuters21578.tar.gz"
_SGM_NAME = re.compile(r"reut2-\d+\.sgm$")
_REUTERS_DOC = re.compile(r"<REUTERS\b([^>]*)>(.*?)</REUTERS>", re.S | re.I)
_ATTR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_TOPICS = re.compile(r"<TOPICS>(.*?)</TOPICS>", re.S | re.I)
_D = re.compile(r"<D>(.*?)</D>", re.S | re.I)
_TITLE = re.compile(r"<TITLE>(.*?)</TITLE>", re.S | re.I)
_BODY = re.compile(r"<BODY>(.*?)(?:</BODY>|$)", re.S | re.I)
_TEXT = re.compile(r"<TEXT\b[^>]*>(.*?)</TEXT>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
_ENTITY = re.compile(r"&(#\d+|lt|gt|amp|quot|apos);")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _unescape_sgml(s: str) -> str:
    """Resolves the SGML entities the collection uses; control-character references (``&#3;``) become spaces."""

    def sub(m: re.Match) -> str:
        e = m.group(1)
        if e[0] == "#":
            c = int(e[1:])
            return chr(c) if c >= 32 and c < 0x110000 else " "
        return _NAMED[e]

    return _ENTITY.sub(sub, s)


def parse_reuters_sgml(content: str, source: str) -> Iterator[dict]:
    """Parses the ``<REUTERS ...>`` blocks of one ``reut2-*.sgm`` file (already decoded).

    ModApte split: LEWISSPLIT="TRAIN"/"TEST" with TOPICS="YES" -> train/test; every other document is yielded with
    ``split=None`` and no text (skipped). Labels are the ``<TOPICS>`` entries (possibly none); text is TITLE and
    BODY, or for unprocessed stories without either the whole ``<TEXT>`` with tags removed.

    ModApte documents without any topic (1,828 train, 280 test) are kept with ``labels=[]``: they train the
    models and fill the index, and retrieval evaluation ignores label-less queries (no document is relevant to
    them).
    """
    for m in _REUTERS_DOC.finditer(content):
        attrs = {k.upper(): v for k, v in _ATTR.findall(m.group(1))}
        inner = m.group(2)
        doc_id = attrs.get("NEWID")
        where = f"{source}#NEWID={doc_id}"
        if not doc_id:
            yield _record(None, _excerpt(inner), [], None, where, "missing id: <REUTERS> without NEWID in " + source)
            continue
        lewis, topics_attr = attrs.get("LEWISSPLIT", "").upper(), attrs.get("TOPICS", "").upper()
        split = {"TRAIN": "train", "TEST": "test"}.get(lewis) if topics_attr == "YES" else None
        if split is None:
            yield _record(doc_id, None, [], None, where)
            continue
        tm = _TOPICS.search(inner)
        labels = [_unescape_sgml(d).strip() for d in _D.findall(tm.group(1))] if tm else []
        text_m = _TEXT.search(inner)
        text_part = text_m.group(1) if text_m else ""
        pieces = [p.group(1) for p in (_TITLE.search(text_part), _BODY.search(text_part)) if p]
        text = "\n".join(pieces) if pieces else _TAG.sub(" ", text_part)
        text = _unescape_sgml(text).strip()
        if not text:
            yield _record(
                doc_id,
                None,
                [x for x in labels if x],
                split,
                where,
                f"missing text: NEWID={doc_id} in {source} has no TITLE, BODY or TEXT",
            )
            continue
        yield _record(doc_id, text, [x for x in labels if x], split, where)


def read_reuters_archive(path: str | Path) -> Iterator[dict]:
    """Streams the ``reut2-*.sgm`` members of ``reuters21578.tar.gz`` (one file in memory at a time)."""
    path = Path(path)
    with _open_tar(path) as tar:
        for member in tar:
            if member.isfile() and _SGM_NAME.search(member.name):
                f = tar.extractfile(member)
                assert f is not None
                # The files hold a few non-UTF-8 bytes; latin-1 decodes every byte.
                yield from parse_reuters_sgml(f.read().decode("latin-1"), f"{path.name}:{member.name}")


def read_reuters_file(path: str | Path) -> Iterator[dict]:
    path = Path(path)
    yield from parse_reuters_sgml(path.read_bytes().decode("latin-1"), path.name)


def _reuters_units(source: Path) -> list[str]:
    if source.is_file():
        return [str(source)]
    files = sorted(p for p in source.rglob("reut2-*.sgm") if p.is_file())
    if files:
        return [str(p) for p in files]
    if (source / _REUTERS_ARCHIVE).is_file():
        return [str(source / _REUTERS_ARCHIVE)]
    return []


# ---------------------------------------------------------------------------------------------------- JSON Lines
def hash_split(doc_id: str, test_fraction: float) -> str:
    """Deterministic train/test split: the first 8 bytes of sha1(id) as a fraction of 2**64."""
    h = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "big")
    return "test" if h / 2.0**64 < test_fraction else "train"


def _jsonl_record(line: bytes, where: str, test_fraction: float) -> dict:
    """One line -> a record; any failure (a RecursionError on deep nesting, a lone surrogate...) is its error."""
    try:
        return _jsonl_fields(line, where, test_fraction)
    except Exception as e:  # noqa: BLE001 - one bad record never aborts the batch: it is quarantined
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:EXCERPT_CHARS]
        return _record(None, _excerpt(line.rstrip(b"\r\n")), [], None, where, f"unreadable record: {where}: {detail}")


def _jsonl_fields(line: bytes, where: str, test_fraction: float) -> dict:
    def bad(kind: str, detail: str, id_: str | None = None) -> dict:
        return _record(id_, _excerpt(line.rstrip(b"\r\n")), [], None, where, f"{kind}: {where}: {detail}")

    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return bad("undecodable utf-8", str(e))
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        return bad("invalid json", str(e))
    if not isinstance(obj, dict):
        return bad("invalid json", f"expected an object, got {type(obj).__name__}")
    if "id" not in obj or obj["id"] is None:
        return bad("missing id", "no 'id' field")
    doc_id = obj["id"]
    if not isinstance(doc_id, str) or not doc_id:
        return bad("bad id", f"'id' must be a non-empty string, got {doc_id!r}"[:EXCERPT_CHARS])
    if "text" not in obj or obj["text"] is None:
        return bad("missing text", "no 'text' field", doc_id)
    if not isinstance(obj["text"], str):
        return bad("bad text", f"'text' must be a string, got {type(obj['text']).__name__}", doc_id)
    labels = obj.get("labels", [])
    if labels is None:
        labels = []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return bad("bad labels", f"'labels' must be a list of strings, got {labels!r}"[:EXCERPT_CHARS], doc_id)
    split = obj.get("split")
    if split is None:
        split = hash_split(doc_id, test_fraction)
    elif split not in SPLITS:
        return bad("bad split", f"'split' must be 'train' or 'test', got {split!r}"[:EXCERPT_CHARS], doc_id)
    for v in (doc_id, obj["text"], *labels):
        v.encode("utf-8")  # a lone surrogate ("\\ud800") is valid JSON but no UTF-8 string
    return _record(doc_id, obj["text"], labels, split, where)


def read_jsonl_file(path: str | Path, test_fraction: float = 0.2) -> Iterator[dict]:
    """Reads one ``.jsonl`` or ``.jsonl.gz`` file; blank lines are not records. Never raises on bad content."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield _jsonl_record(line, f"{path.name}:{lineno}", test_fraction)
    except (OSError, EOFError) as e:  # truncated gzip, unreadable file: one error record, keep going
        where = f"{path.name}:{lineno + 1}"
        yield _record(None, None, [], None, where, f"unreadable file: {where}: {e}")


def _jsonl_units(source: Path) -> list[str]:
    if source.is_file():
        return [str(source)]
    return sorted(str(p) for p in source.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")))


# ---------------------------------------------------------------------------------------------------- dispatch
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


def _s3_units(dataset: str, source: str) -> list[str]:
    """:func:`input_units` of an ``s3://`` object or prefix (the same layouts as local files and folders)."""
    keys = [k for k, _ in store.list_prefix(source)]
    if not keys:  # a single object, or nothing at all
        if not store.exists(source):
            raise ValueError(f"source {source!r} does not exist (no object or prefix at this URI)")
        name = source.rstrip("/").rsplit("/", 1)[-1]
        ok = {
            "20ng": name.endswith(_ARCHIVE_SUFFIXES),
            "reuters21578": bool(_SGM_NAME.search(name)) or name.endswith(_ARCHIVE_SUFFIXES),
            "jsonl": True,
        }[dataset]
        if not ok:
            want = {
                "20ng": "a 20news-bydate .tar.gz archive",
                "reuters21578": "a reut2-NNN.sgm file or a .tar.gz archive of them",
            }[dataset]
            raise ValueError(f"source {source!r} is not {want} (or a prefix holding the corpus's files)")
        return [source]
    if dataset == "20ng":
        groups = sorted(
            {tuple(k.split("/")[:2]) for k in keys if len(k.split("/")) == 3 and k.split("/")[0] in _NG_SPLIT_DIRS}
        )
        if groups:
            return [store.join(source, d, g) for d, g in groups]
        return [store.join(source, _NG_ARCHIVE)] if _NG_ARCHIVE in keys else []
    if dataset == "reuters21578":
        files = [k for k in keys if _SGM_NAME.search(k.rsplit("/", 1)[-1])]
        if files:
            return [store.join(source, k) for k in files]
        return [store.join(source, _REUTERS_ARCHIVE)] if _REUTERS_ARCHIVE in keys else []
    return [store.join(source, k) for k in keys if k.endswith(_JSONL_SUFFIXES)]


def _read_s3_unit(dataset: str, unit: str, **kw) -> Iterator[dict]:
    """Reads an ``s3://`` unit: a 20 Newsgroups group prefix object by object, any other unit as a local file of
    the same name (downloaded to a temporary folder, removed after reading)."""
    name = unit.rstrip("/").rsplit("/", 1)[-1]
    if dataset == "20ng" and not name.endswith(_ARCHIVE_SUFFIXES):
        split_dir = unit.rstrip("/").rsplit("/", 2)[-2]
        for rel, _ in store.list_prefix(unit):
            if "/" not in rel:
                yield _ng_record(
                    split_dir,
                    name,
                    rel,
                    store.read_bytes(store.join(unit, rel)),
                    f"{split_dir}/{name}/{rel}",
                    kw.get("strip_headers", False),
                )
        return
    with tempfile.TemporaryDirectory(prefix="semhash-unit-") as tmp:
        local = os.path.join(tmp, name)
        store.download_file(unit, local)
        try:
            yield from read_unit(dataset, local, **kw)
        except ValueError as e:
            raise ValueError(str(e).replace(repr(local), repr(unit))) from None


def input_units(dataset: str, source: str | os.PathLike) -> list[str]:
    """The independently readable pieces of a source (files, archive, newsgroup folders), in reading order.

    ``source`` is a local path or an ``s3://`` object or prefix. Raises ValueError for an unknown dataset or a
    missing source; returns [] when the source holds no input.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if store.is_s3(str(source)):
        return _s3_units(dataset, str(source))
    src = Path(source)
    if not src.exists():
        raise ValueError(f"source {str(src)!r} does not exist")
    return {"20ng": _20ng_units, "reuters21578": _reuters_units, "jsonl": _jsonl_units}[dataset](src)


def read_unit(dataset: str, unit: str, *, strip_headers: bool = False, test_fraction: float = 0.2) -> Iterator[dict]:
    """Reads one unit returned by :func:`input_units` (a local path or an ``s3://`` URI)."""
    if store.is_s3(str(unit)):
        return _read_s3_unit(dataset, str(unit), strip_headers=strip_headers, test_fraction=test_fraction)
    p = Path(unit)
    if dataset == "20ng":
        return read_20ng_archive(p, strip_headers) if p.is_file() else read_20ng_group_dir(p, strip_headers)
    if dataset == "reuters21578":
        return read_reuters_file(p) if _SGM_NAME.search(p.name) else read_reuters_archive(p)
    if dataset == "jsonl":
        return read_jsonl_file(p, test_fraction)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def read_records(
    dataset: str, source: str | os.PathLike, *, strip_headers: bool = False, test_fraction: float = 0.2
) -> Iterator[dict]:
    """Streams every record of a corpus (all units in order)."""
    for unit in input_units(dataset, source):
        log.debug("reading %s unit %s", dataset, unit)
        yield from read_unit(dataset, unit, strip_headers=strip_headers, test_fraction=test_fraction)


def error_kind(error: str) -> str:
    """The kind of a reader error (the part before the first ':'), used as the quarantine reason."""
    return error.split(":", 1)[0]

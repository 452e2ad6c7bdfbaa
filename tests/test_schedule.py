"""The nightly schedules in infra/schedule parse, and the commands they run exist (job file and CLI subcommand)."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ROOT / "infra" / "schedule"
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]  # minute hour day month weekday
_ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_STOP = {">", ">>", "2>&1", "|", "&&", ";", "||"}


def _cron_field_ok(text: str, lo: int, hi: int) -> bool:
    for item in text.split(","):
        m = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", item)
        if not m or (m.group(2) is not None and int(m.group(2)) < 1):
            return False
        if m.group(1) != "*":
            bounds = [int(x) for x in m.group(1).split("-")]
            if not all(lo <= b <= hi for b in bounds) or bounds != sorted(bounds):
                return False
    return True


def _schedule_ok(expr: str) -> bool:
    fields = expr.split()
    return len(fields) == 5 and all(_cron_field_ok(f, lo, hi) for f, (lo, hi) in zip(fields, CRON_RANGES))


def _check_job(script: str, args: list[str]) -> str:
    """``script`` is a jobs/*.py file of this repository that runs the CLI subcommand of its name with ``args``."""
    rel = script[script.index("jobs/") :]
    path = ROOT / rel
    assert path.is_file(), f"{script}: no {rel} in the repository"
    command = path.stem
    assert f'main(["{command}"' in path.read_text(), f"{rel} does not run `semhash {command}`"
    from semhash_spark.cli import build_parser

    ns = build_parser().parse_args([command, *args])  # exits (fails the test) on an unknown command/flag
    assert ns.command == command and ns.fn.__name__ == f"cmd_{command}"
    return command


def _job_in_tokens(tokens: list[str]) -> tuple[str, list[str]]:
    at = next(i for i, t in enumerate(tokens) if re.search(r"(^|/)jobs/\w+\.py$", t))
    args = []
    for t in tokens[at + 1 :]:
        if t in _STOP:
            break
        args.append(t)
    return tokens[at], args


def test_crontab_lines_parse_and_run_existing_jobs():
    jobs = []
    for line in (SCHEDULE / "crontab").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or _ENV_LINE.match(line):
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, f"not a crontab entry (5 time fields + command): {line!r}"
        assert _schedule_ok(" ".join(fields[:5])), f"bad schedule in {line!r}"
        jobs.append(_check_job(*_job_in_tokens(shlex.split(fields[5]))))
    assert "reindex" in jobs


def test_kubernetes_cronjob_runs_spark_submit_of_the_reindex_job():
    doc = yaml.safe_load((SCHEDULE / "reindex-cronjob.yaml").read_text())
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob"
    spec = doc["spec"]
    assert _schedule_ok(spec["schedule"]) and spec["concurrencyPolicy"] == "Forbid"
    (container,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["spark-submit"]
    script, args = _job_in_tokens(container["args"])
    assert _check_job(script, args) == "reindex"


def _literal(node: ast.AST, consts: dict):
    """Literal value of a node: constants, names of module constants, f-strings over them, lists."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return consts[node.id]
    if isinstance(node, ast.JoinedStr):
        return "".join(str(_literal(v.value if isinstance(v, ast.FormattedValue) else v, consts)) for v in node.values)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, consts) for e in node.elts]
    raise ValueError(f"not a literal: {ast.dump(node)}")


def test_airflow_dag_parses_and_submits_the_reindex_job():
    tree = ast.parse((SCHEDULE / "reindex_dag.py").read_text())
    consts = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    (dag,) = [c for c in calls if c.func.id == "DAG"]
    kw = {k.arg: k.value for k in dag.keywords}
    assert _schedule_ok(_literal(kw["schedule"], consts)) and _literal(kw["max_active_runs"], consts) == 1
    submits = [c for c in calls if c.func.id == "SparkSubmitOperator"]
    ran = []
    for call in submits:
        kw = {k.arg: k.value for k in call.keywords}
        ran.append(_check_job(_literal(kw["application"], consts), _literal(kw["application_args"], consts)))
    assert ran[0] == "reindex"


@pytest.mark.parametrize("command", ["reindex", "dedup"])
def test_jobs_files_are_thin_entry_points(command):
    text = (ROOT / "jobs" / f"{command}.py").read_text()
    assert "SEMHASH_UNDER_SUBMIT" in text and f'main(["{command}", *sys.argv[1:]])' in text

"""A short (10 s) run of the service load scenario (tests/load_util.py, shared with benchmarks/service_load.py):
a fixed request rate with zero errors while a new version is published and the S3 server is restarted (the 60 s
run is the benchmark: see docs/benchmarks.md)."""

from __future__ import annotations

import pytest
from load_util import _version_order, scenario


@pytest.mark.slow
def test_fixed_rate_through_publish_and_s3_restart(s3_server, tmp_path):
    report = scenario(s3_server, tmp_path, duration=10.0, rate=30.0, n=5000, bits=64, threads=6)
    assert report["errors"] == 0, (report["first_errors"], report["events"], report["latency_ms"])
    assert report["completed"] == report["planned"] == 300
    assert [e.get("error") for e in report["events"]] == [None, None], report["events"]
    assert len(report["versions_in_order"]) == 2, report["versions_in_order"]  # switched once
    assert report["stale_answers"] == 0, report  # and never back: no old answer to a request sent after a new one


def test_version_order_counts_only_causally_stale_answers():
    # (due, latency, status, version, partial, error, sent, done): answers to requests sent around the switch may
    # come in either version; an old answer to a request sent after a new answer arrived is a flap
    rec = lambda v, sent, done: (0.0, 0.0, 200, v, False, None, sent, done)  # noqa: E731
    around = [rec("v1", 0.0, 0.1), rec("v2", 0.05, 0.12), rec("v1", 0.06, 0.13), rec("v2", 0.2, 0.3)]
    assert _version_order(around) == (["v1", "v2"], 0)
    assert _version_order(around + [rec("v1", 0.35, 0.4)]) == (["v1", "v2"], 1)

"""A short (10 s) run of the service load scenario (tests/load_util.py, shared with benchmarks/service_load.py):
a fixed request rate with zero errors while a new version is published and the S3 server is restarted (the 60 s
run is the benchmark: see docs/benchmarks.md)."""

from __future__ import annotations

import pytest
from load_util import scenario


@pytest.mark.slow
def test_fixed_rate_through_publish_and_s3_restart(s3_server, tmp_path):
    report = scenario(s3_server, tmp_path, duration=10.0, rate=30.0, n=5000, bits=64, threads=6)
    assert report["errors"] == 0, (report["first_errors"], report["events"], report["latency_ms"])
    assert report["completed"] == report["planned"] == 300
    assert [e.get("error") for e in report["events"]] == [None, None], report["events"]
    assert len(report["versions_in_order"]) == 2, report["versions_in_order"]  # switched once
    assert report["stale_answers"] == 0, report  # and never back: no old answer to a request sent after a new one

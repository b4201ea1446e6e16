"""Helpers for the exporter's tests: run ``model-fleet-exporter serve``, scrape and parse it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from fleet_contract.labels import HOST_LABEL

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
T = TypeVar("T")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe: Callable[[], T], what: str, timeout: float = 20.0, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except Exception as exc:  # a probe may fail while the thing starts
            value, last = None, exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


def parse_metrics(text: str) -> Samples:
    """{(sample name, labels): value} for a Prometheus text exposition.

    Every sample must carry the exporter's ``host`` label (checked here, for every test that
    scrapes); the keys hold the other labels, which are what the tests compare.
    """
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            assert labels.pop(HOST_LABEL, ""), f"a sample without the host label: {s}"
            samples[(s.name, frozenset(labels.items()))] = s.value
    return samples


def sample(samples: Samples, metric: str, /, **labels: str) -> float | None:
    """The value of the sample with exactly these labels, or None."""
    return samples.get((metric, frozenset(labels.items())))


def samples_named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of one name, by label set."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body), also for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ExporterProcess:
    """``model-fleet-exporter serve`` in a subprocess on a free port, its log in a file."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "exporter.cli", "serve", "--bind", f"127.0.0.1:{self.port}"]
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [*cmd, *args],
            cwd=cwd or REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20.0) -> ExporterProcess:
        """Wait until /healthz answers; fail with the log if the process died."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the exporter exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                return http_get(self.url + "/healthz", timeout=1)[0] == 200
            except OSError:
                return False

        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"the exporter did not answer /healthz:\n{self.log()}")
            time.sleep(0.05)
        return self

    def metrics(self) -> Samples:
        """Scrape /metrics once."""
        status, body = http_get(self.url + "/metrics")
        assert status == 200, body
        return parse_metrics(body.decode())

    def log(self) -> str:
        """Everything the process wrote so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; return the exit code (kill and fail if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the exporter ignored SIGTERM:\n{self.log()}") from None
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()

"""journalctl (and systemctl) as child processes: one started with its errors kept aside, read
as a unit's timestamped lines until its run ends, and ended (exporter.adapters.journald)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any, Final

from exporter.logsource import SourceError
from fleet_contract.systemd import rfc3339

COMMAND_TIMEOUT: Final = 10.0
# A followed unit that printed nothing for this long is asked whether its run is over (the
# manager's messages say so at once; this catches a message the stream did not carry).
IDLE_CHECK_SECONDS: Final = 10.0
READ_SIZE: Final = 65536


def message_bytes(value: Any) -> bytes:
    """An entry's MESSAGE as journalctl's JSON gives it: text, bytes as a list of numbers
    (not UTF-8), several values, or null."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return bytes(value)
    if isinstance(value, list):
        return b"\n".join(message_bytes(v) for v in value)
    return b""


class JournalStream:
    """One ``journalctl -o json`` of a unit, as timestamped lines, until its run ends."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        unit: str,
        run_start: int | None,
        run_over: Callable[[], bool] | None,
        *,
        lost: bool,
    ) -> None:
        self._proc = proc
        self._unit = unit
        self._run_start = run_start
        self._run_over = run_over  # None: the unit was not running, the stream ends by itself
        self._lost = lost
        self._rest = b""
        self._done = False
        self._interrupted = threading.Event()

    def lost(self) -> bool:
        """The journal no longer reaches back to where this stream began."""
        return self._lost

    def read(self) -> bytes:
        """The next lines as soon as any arrived; b'' once the run ended or the stream was cut."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while not self._done:
            ready, _, _ = select.select([fd], [], [], IDLE_CHECK_SECONDS)
            if not ready:
                if self._run_over is not None and self._run_over():
                    self._done = True
                continue
            data = os.read(fd, READ_SIZE)
            if not data:
                self._done = True
                self._raise_if_failed()
                break
            out = self._convert(data)
            if out:
                return out
        return b""

    def interrupt(self) -> None:
        """End the stream now, from any thread: the reader then sees its end."""
        self._interrupted.set()
        with contextlib.suppress(OSError):  # already gone
            self._proc.terminate()

    def close(self) -> None:
        """Stop journalctl and release its pipes."""
        self._interrupted.set()
        end(self._proc)

    def _convert(self, data: bytes) -> bytes:
        buf = self._rest + data
        cut = buf.rfind(b"\n") + 1
        self._rest = buf[cut:]
        out: list[bytes] = []
        for raw in buf[:cut].splitlines():
            entry = json.loads(raw)
            ns = int(entry["__REALTIME_TIMESTAMP"]) * 1000
            if entry.get("_PID") == "1" and entry.get("UNIT") == self._unit:
                started = self._run_start is not None and ns >= self._run_start
                if started and self._run_over is not None and self._run_over():
                    self._done = True  # what follows belongs to another run: a new stream
                    break
                continue
            stamp = rfc3339(ns).encode()
            text = message_bytes(entry.get("MESSAGE")).replace(b"\n", b"\n" + stamp + b" ")
            out.append(stamp + b" " + text + b"\n")
        return b"".join(out)

    def _raise_if_failed(self) -> None:
        code = self._proc.wait()
        if code != 0 and not self._interrupted.is_set():
            raise SourceError(f"journalctl for {self._unit} exited {code}: {stderr_of(self._proc)}")


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a journalctl with its errors kept in a file (a pipe left unread could fill)."""
    errors: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by end, with the process
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        errors.close()
        raise SourceError(f"cannot run {argv[0]}: {exc}") from exc
    proc.stderr = errors  # read back by stderr_of
    return proc


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    errors = proc.stderr
    if errors is None:
        return ""
    errors.seek(0)
    return errors.read().decode("utf-8", "replace").strip()[-300:] or "no message"


def end(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        proc.terminate()
    try:
        proc.wait(COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def output(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise SourceError(f"{what} exited {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout

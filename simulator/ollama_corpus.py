"""Ollama's own log lines for the stand-ins: the corpus under tests/data/ollama, replayed.

The corpus holds, per Ollama release, what the server prints for a failed load on each engine,
a KV cache that does not fit, an out-of-memory while generating, a load that runs out of system
memory, an eviction, a partial offload and more (tests/data/ollama/cases.yml says what each
counts). The loop's model server (simulator.loop_setup) prints the failed load of the release
and engine that ``$SIM_OLLAMA`` names (``<version>/<engine>``, engine ``legacy`` or ``new``;
default ``0.12.6/legacy``, the shipped OLLAMA_VERSION on the default ladder's models).
"""

from __future__ import annotations

import calendar
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CORPUS: Final = Path(__file__).resolve().parent.parent / "tests" / "data" / "ollama"
ENV: Final = "SIM_OLLAMA"
DEFAULT: Final = "0.12.6/legacy"
# The case each engine's failed load is printed from.
FAILED_LOAD: Final = {"legacy": "legacy_load_oom", "new": "new_engine_load"}

_TIME = re.compile(r"^time=(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?Z ")
_GIN = re.compile(r"^\[GIN\] (\d{4})/(\d\d)/(\d\d) - (\d\d):(\d\d):(\d\d) ")


@dataclass(frozen=True)
class Line:
    """One line of a case, and when it was printed (seconds after the case's first line)."""

    at: float
    text: str


def versions() -> list[str]:
    """The Ollama releases the corpus has."""
    return sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def case_path(version: str, case: str) -> Path:
    """The file of one case."""
    return CORPUS / version / f"{case}.log"


def read_case(version: str, case: str) -> list[Line]:
    """A case's lines with their times: Ollama's ``time=``, gin's whole seconds (never before
    the line before); llama.cpp's own lines have none and take the time of the next line that
    has one (the server logs the failure right after its runner printed it), as ``scan`` does."""
    texts = case_path(version, case).read_text().splitlines()
    own = [_seconds(text) for text in texts]
    first = next((t for t in own if t is not None), 0.0)
    times: list[float | None] = [None if t is None else t - first for t in own]
    later: float | None = None
    for i in range(len(times) - 1, -1, -1):  # untimed: the next timed line's
        if times[i] is None:
            times[i] = later
        later = times[i]
    out: list[Line] = []
    last = 0.0
    for text, at in zip(texts, times, strict=True):
        last = last if at is None else max(last, at)
        out.append(Line(last, text))
    return out


def _seconds(text: str) -> float | None:
    m = _TIME.match(text)
    gin = _GIN.match(text) if m is None else None
    found = m or gin
    if found is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in found.groups()[:6])
    whole = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    fraction = m.group(7) if m is not None else None
    return whole + (float(fraction) if fraction else 0.0)


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def replay_script(lines: list[Line], *, longest_pause: float = 2.5) -> str:
    """A busybox sh script printing ``lines`` with their pauses, each no longer than
    ``longest_pause`` (more than the exporter's 2 s incident window: what was apart stays
    apart, what was within the window stays within it)."""
    parts = []
    last = lines[0].at if lines else 0.0
    for line in lines:
        pause = min(line.at - last, longest_pause)
        if pause > 0:
            parts.append(f"sleep {pause:.3f}")
        parts.append(f"printf '%s\\n' {_quoted(line.text)}")
        last = line.at
    return "\n".join(parts)


def live_script(lines: list[Line]) -> str:
    """Shell that prints ``lines`` now, with the time of printing in Ollama's and gin's
    stamps (a model server's failed load, printed again each time it happens)."""
    parts = []
    for line in lines:
        text = line.text
        if _TIME.match(text):
            rest = text.split(" ", 1)[1]
            parts.append(f'echo "time=$(date -u +%Y-%m-%dT%H:%M:%S.000Z) "{_quoted(rest)}')
        elif (gin := _GIN.match(text)) is not None:
            rest = text[gin.end() :]
            parts.append(f"echo \"[GIN] $(date -u '+%Y/%m/%d - %H:%M:%S') \"{_quoted(rest)}")
        else:
            parts.append(f"echo {_quoted(text)}")
    return "\n".join(parts)


def printed_now(lines: list[Line], now: float | None = None) -> list[str]:
    """The texts of ``lines`` as the server would print them at ``now`` (default: the time):
    Ollama's and gin's stamps set to it, llama.cpp's own lines as they are."""
    at = time.time() if now is None else now
    ollama = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
    gin = time.strftime("%Y/%m/%d - %H:%M:%S", time.gmtime(at))
    out = []
    for line in lines:
        text = line.text
        if _TIME.match(text):
            text = f"time={ollama} " + text.split(" ", 1)[1]
        elif (found := _GIN.match(text)) is not None:
            text = f"[GIN] {gin} " + text[found.end() :]
        out.append(text)
    return out


def failed_load(spec: str | None = None) -> list[Line]:
    """The failed load that ``spec`` (``<version>/<engine>``; None: ``$SIM_OLLAMA``, else
    the default) prints; ValueError naming the choices when there is none."""
    spec = spec or os.environ.get(ENV) or DEFAULT
    version, _, engine = spec.partition("/")
    if engine not in FAILED_LOAD or version not in versions():
        raise ValueError(
            f"{ENV}={spec!r}: expected <version>/<engine>, version one of "
            f"{', '.join(versions())}, engine one of {', '.join(FAILED_LOAD)}"
        )
    return read_case(version, FAILED_LOAD[engine])

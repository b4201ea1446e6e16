"""LogClassifier: sorts log lines into VRAM-error kinds, fast enough for a busy model server.

A line counts at most once, for the first kind (in configuration order) with a pattern that
matches it. Patterns are Python regular expressions searched within one line, case-insensitive
unless configured otherwise.

Speed comes from a literal prefilter: every pattern has a literal run that any match must
contain (``cudaMalloc failed: out of memory`` for the pattern of that name). The chunk is
searched for those literals with ``bytes.find`` (C speed), and only the few lines that contain
one are checked with the regular expressions. A pattern without such a literal (at least
three characters outside groups, classes and alternations) is checked on every line instead:
correct, but slower.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from fleet_contract.errors import ERROR_KINDS

# The kinds and their patterns are part of the contract (fleet_contract.errors), in the order
# they are tried.
DEFAULT_PATTERNS: Final[Mapping[str, tuple[str, ...]]] = {
    kind.name: kind.default_patterns for kind in ERROR_KINDS
}

_MIN_LITERAL: Final = 3
# Shared prefilter needles are at least this long, so that they stay rare in normal lines.
_MIN_SHARED: Final = 10
_INLINE_FLAGS: Final = re.compile(r"\(\?[aiLmsux-]+[):]")
_QUANTIFIERS: Final = frozenset("*+?{")
# Escapes that stand for a class or an assertion, not for the character itself.
_SPECIAL_ESCAPES: Final = frozenset("dDwWsSbBAZzGnrtfvx0123456789uUN")


class PatternError(ValueError):
    """A pattern is not a valid regular expression; the message names the kind and index."""


def required_literal(pattern: str) -> str | None:
    """The longest literal run every match of ``pattern`` must contain, or None if unsure."""
    if _INLINE_FLAGS.search(pattern):
        return None  # flags such as (?x) change what the characters mean
    runs: list[str] = []
    run: list[str] = []
    i = 0
    n = len(pattern)

    def cut() -> None:
        if run:
            runs.append("".join(run))
            run.clear()

    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt in _SPECIAL_ESCAPES:
                cut()
            else:
                run.append(nxt)
            i += 2
        elif c == "|":
            return None  # a top-level alternative: no single literal is required
        elif c == "(":
            cut()
            i = _skip_group(pattern, i)
        elif c == "[":
            cut()
            i = _skip_class(pattern, i)
        elif c in _QUANTIFIERS:
            # the quantified character may be absent (or repeated): it ends the run
            if run:
                run.pop()
            cut()
            i += 1
        elif c in ".^$)":
            cut()
            i += 1
        else:
            run.append(c)
            i += 1
        # a quantifier right after an escaped character applies to it as well
        if i < n and pattern[i] in _QUANTIFIERS and run:
            run.pop()
            cut()
    cut()
    best = max(runs, key=len, default="")
    return best if len(best) >= _MIN_LITERAL else None


def _skip_group(pattern: str, i: int) -> int:
    """Where the group that opens at ``i`` ends (past its closing parenthesis)."""
    depth = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "[":
            i = _skip_class(pattern, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 2 if c == "\\" else 1  # an escaped character goes with its backslash
    return n


def _skip_class(pattern: str, i: int) -> int:
    """Where the character class that opens at ``i`` ends (past its closing bracket)."""
    n = len(pattern)
    i += 1
    if i < n and pattern[i] == "^":
        i += 1
    if i < n and pattern[i] == "]":
        i += 1  # a leading ']' is a literal member
    while i < n and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return min(i + 1, n)


@dataclass(frozen=True)
class _Kind:
    name: str
    regex: re.Pattern[bytes]


class LogClassifier:
    """Counts log lines per error kind; build once, use from one thread at a time per call."""

    def __init__(
        self,
        patterns: Mapping[str, Sequence[str]] | None = None,
        *,
        case_sensitive: bool = False,
    ) -> None:
        patterns = DEFAULT_PATTERNS if patterns is None else patterns
        flags = 0 if case_sensitive else re.IGNORECASE
        self.case_sensitive = case_sensitive
        kinds: list[_Kind] = []
        needles: list[bytes] = []
        self._line_by_line = False
        for kind, kind_patterns in patterns.items():
            if not kind_patterns:
                continue
            for index, pattern in enumerate(kind_patterns):
                try:
                    re.compile(pattern.encode(), flags)
                except re.error as exc:
                    raise PatternError(f"{kind}[{index}]: {pattern!r}: {exc}") from exc
                literal = required_literal(pattern)
                if literal is None:
                    self._line_by_line = True
                else:
                    needle = literal.encode()
                    needles.append(needle if case_sensitive else needle.lower())
            combined = "|".join(f"(?:{p})" for p in kind_patterns)
            kinds.append(_Kind(kind, re.compile(combined.encode(), flags)))
        self._kinds = tuple(kinds)
        self.kinds: tuple[str, ...] = tuple(k.name for k in kinds)
        self._needles = _minimal_needles(needles)

    def classify(self, line: bytes | str) -> str | None:
        """The kind of one line, or None when no pattern matches."""
        data = line.encode() if isinstance(line, str) else line
        for kind in self._kinds:
            if kind.regex.search(data):
                return kind.name
        return None

    def matches(self, chunk: bytes) -> list[tuple[int, str]]:
        """(line start offset, kind) for every matching line of ``chunk``, in order.

        ``chunk`` holds whole lines separated by ``\\n``; a last line without one counts too.
        """
        if not self._kinds:
            return []
        if self._line_by_line:
            return self._matches_line_by_line(chunk)
        haystack = chunk if self.case_sensitive else chunk.lower()
        starts: set[int] = set()
        find = haystack.find
        rfind = haystack.rfind
        for needle in self._needles:
            i = find(needle)
            while i >= 0:
                start = rfind(b"\n", 0, i) + 1
                starts.add(start)
                end = find(b"\n", i)
                if end < 0:
                    break
                i = find(needle, end + 1)
        found: list[tuple[int, str]] = []
        for start in sorted(starts):
            end = chunk.find(b"\n", start)
            kind = self.classify(chunk[start : end if end >= 0 else len(chunk)])
            if kind is not None:
                found.append((start, kind))
        return found

    def _matches_line_by_line(self, chunk: bytes) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        start = 0
        for line in chunk.split(b"\n"):
            kind = self.classify(line)
            if kind is not None:
                found.append((start, kind))
            start += len(line) + 1
        return found

    def count(self, chunk: bytes) -> dict[str, int]:
        """Matching lines per kind in ``chunk`` (every kind present, at 0 when none)."""
        counts = dict.fromkeys(self.kinds, 0)
        for _, kind in self.matches(chunk):
            counts[kind] += 1
        return counts


def _minimal_needles(literals: Iterable[bytes]) -> tuple[bytes, ...]:
    # Any substring of a required literal is required too, so a few shared substrings can
    # stand for many patterns ("out of memory" for three of the defaults): fewer passes over
    # the chunk. Greedy set cover, preferring substrings shared by more literals, then longer.
    remaining = set(literals)
    chosen: list[bytes] = []
    while remaining:
        best: tuple[int, int, bytes] | None = None
        for literal in remaining:
            size = len(literal)
            shortest = min(size, _MIN_SHARED)
            for length in range(size, shortest - 1, -1):
                for start in range(size - length + 1):
                    candidate = literal[start : start + length]
                    covered = sum(1 for other in remaining if candidate in other)
                    key = (covered, length, candidate)
                    if best is None or key[:2] > best[:2]:
                        best = key
        assert best is not None
        needle = best[2]
        chosen.append(needle)
        remaining = {other for other in remaining if needle not in other}
    return tuple(chosen)


@dataclass
class ScanResult:
    """What ``scan`` found in a file: total lines and matching lines per kind."""

    lines: int
    counts: dict[str, int]


def line_blocks(read: Callable[[int], bytes], chunk_size: int = 256 * 1024) -> Iterator[bytes]:
    """Whole lines of what ``read(n)`` returns until b'', a block at a time; the last block
    may lack its newline (a file that does not end with one)."""
    rest = b""
    while True:
        block = read(chunk_size)
        if not block:
            break
        data = rest + block if rest else block
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        yield data[:cut]
        rest = data[cut:]
    if rest:
        yield rest


def scan_stream(
    classifier: LogClassifier, read: Callable[[int], bytes], chunk_size: int = 256 * 1024
) -> ScanResult:
    """Classify everything ``read(n)`` returns (a binary file's read) until it returns b''."""
    counts = dict.fromkeys(classifier.kinds, 0)
    lines = 0
    for block in line_blocks(read, chunk_size):
        lines += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        for _, kind in classifier.matches(block):
            counts[kind] += 1
    return ScanResult(lines=lines, counts=counts)

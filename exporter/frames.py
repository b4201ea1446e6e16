"""A log stream's bytes decoded into timestamped lines, each frame checked against the ledger.

Docker's logs API (with ``timestamps=1``) sends one frame per log message: an 8-byte header
(stream, size) and the message prefixed with its RFC 3339 timestamp. Messages longer than 16
KiB arrive as several frames, only the last ending in a newline; they are joined back into one
line. Unframed streams (a TTY container, a source without frames) have no headers: just
timestamped lines. A frame consumed before is dropped here (exporter.ledger); the cursor moves
only forward. Counting the lines is exporter.containerlog's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from exporter.ledger import NEW, RECOVERED, RESENT, Cursor, Ledger, newer

_HEADER = struct.Struct(">BxxxL")
_HEADER_SIZE: Final = 8

# A frame of a message split over several frames: (timestamp, message, key).
Frame = tuple[bytes, bytes, int]


@dataclass
class Lines:
    """Decoded lines, back to back: each one's end in ``b"".join(parts)`` and its timestamp,
    and the indexes of the lines a re-read recovered."""

    parts: list[bytes] = field(default_factory=list)
    stamps: list[bytes] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)

    def add(self, ts: bytes, text: bytes, *, found: bool = False) -> None:
        """One line (a message of several frames: the loops append whole lines themselves)."""
        if found:
            self.recovered.append(len(self.stamps))
        self.parts.append(text)
        self.stamps.append(ts)
        self.ends.append((self.ends[-1] if self.ends else 0) + len(text))


def consumed(ledger: Ledger, cursor: Cursor | None, ts: bytes, key: int) -> Cursor:
    """Remember a consumed frame; the cursor after it (it only moves forward: a recovered
    frame is older than it)."""
    ledger.remember(ts, key)
    if cursor is None or newer(ts, cursor.timestamp):
        return Cursor(ts, 1)
    if ts == cursor.timestamp:
        return Cursor(ts, cursor.count + 1)
    return cursor


def decode_frames(
    buf: bytes, ledger: Ledger, cursor: Cursor | None, pending: list[Frame], out: Lines
) -> tuple[int, Cursor | None]:
    """Decode ``buf``'s whole frames into ``out`` (``pending``: a message's frames so far,
    across calls); return where the rest of ``buf`` begins, and the cursor."""
    pos, end = 0, len(buf)
    unpack = _HEADER.unpack_from
    admit = ledger.admit
    parts, line_ts, line_ends, recovered = out.parts, out.stamps, out.ends, out.recovered
    total = line_ends[-1] if line_ends else 0
    cur_ts, cur_n = (cursor.timestamp, cursor.count) if cursor is not None else (b"", 0)
    # Frames stamped later than all the ledger remembers are new: only a re-send repeats one.
    newest, width = _fast_point(ledger)
    fresh_ts: list[bytes] = []
    fresh_keys: list[int] = []
    while end - pos >= _HEADER_SIZE:
        _, size = unpack(buf, pos)
        stop = pos + _HEADER_SIZE + size
        if stop > end:
            break
        start = pos + _HEADER_SIZE
        space = buf.find(b" ", start, stop)
        pos = stop
        if space < 0:  # no timestamp: not a frame of a timestamped stream
            continue
        ts = buf[start:space]
        msg = buf[space + 1 : stop]
        key = hash(ts) ^ hash(msg)  # the frame: its timestamp and content
        if not pending and buf[stop - 1] == 10:  # a whole line in one frame
            if space - start == width and ts > newest:
                fresh_ts.append(ts)
                fresh_keys.append(key)
                newest = ts
                code = NEW
            else:
                if fresh_ts:
                    _hand_over(ledger, fresh_ts, fresh_keys)
                code = admit(ts, key)
                if code == RESENT:
                    continue
                if code == RECOVERED:
                    recovered.append(len(line_ts))
                newest, width = _fast_point(ledger)
            parts.append(msg)
            total += len(msg)
            line_ts.append(ts)
            line_ends.append(total)
            if ts == cur_ts:  # the cursor only moves forward: recovered frames are older
                cur_n += 1
            elif code == NEW or not cur_ts or newer(ts, cur_ts):
                cur_ts, cur_n = ts, 1
            continue
        if fresh_ts:
            _hand_over(ledger, fresh_ts, fresh_keys)
        cur_ts, cur_n = _part(ledger, pending, (ts, msg, key), out, (cur_ts, cur_n))
        total = line_ends[-1] if line_ends else 0
        newest, width = _fast_point(ledger)
    if fresh_ts:
        ledger.add_new(fresh_ts, fresh_keys)
    return pos, Cursor(cur_ts, cur_n) if line_ts else cursor


def _fast_point(ledger: Ledger) -> tuple[bytes, int]:
    """The ledger's fast point (b"": none) and its width (-1: none)."""
    newest = ledger.fast_point() or b""
    return newest, len(newest) if newest else -1


def _hand_over(ledger: Ledger, stamps: list[bytes], keys: list[int]) -> None:
    """Frames collected as new go to the ledger (before it checks another frame)."""
    ledger.add_new(stamps, keys)
    stamps.clear()
    keys.clear()


def _part(
    ledger: Ledger, pending: list[Frame], frame: Frame, out: Lines, cur: tuple[bytes, int]
) -> tuple[bytes, int]:
    """A frame of a message split over several frames (or after one): kept until the frame
    that ends the message, which makes them one line. Returns the cursor's (timestamp, count)."""
    ts, msg, key = frame
    resent, found = ledger.resent_frame(ts, key)
    if resent:
        return cur
    pending.append(frame)
    if not msg.endswith(b"\n"):
        return cur
    cur_ts, cur_n = cur
    for frame_ts, _, frame_key in pending:
        ledger.remember(frame_ts, frame_key)
        if frame_ts == cur_ts:
            cur_n += 1
        elif not cur_ts or newer(frame_ts, cur_ts):
            cur_ts, cur_n = frame_ts, 1
    out.add(ts, b"".join(p[1] for p in pending), found=found)
    pending.clear()
    return cur_ts, cur_n


def decode_lines(
    lines: list[bytes], ledger: Ledger, cursor: Cursor | None, out: Lines, *, add_newline: bool
) -> Cursor | None:
    """Decode a TTY stream's lines (one timestamped line per message, no frame headers) into
    ``out``; return the cursor."""
    parts, line_ts, line_ends, recovered = out.parts, out.stamps, out.ends, out.recovered
    total = line_ends[-1] if line_ends else 0
    for line in lines:
        space = line.find(b" ")
        if space < 0:
            continue
        ts = line[:space]
        key = hash(line.rstrip(b"\n"))
        resent, found = ledger.resent_frame(ts, key)
        if resent:
            continue
        cursor = consumed(ledger, cursor, ts, key)
        if found:
            recovered.append(len(line_ts))
        msg = line[space + 1 :] + b"\n" if add_newline else line[space + 1 :]
        parts.append(msg)
        total += len(msg)
        line_ts.append(ts)
        line_ends.append(total)
    return cursor

"""Which frames of one container's log were consumed: re-sends, recovered lines, gaps. Pure.

Docker 20.10's json-file follow misbehaves when the log file rotates (measured on this
project's Docker, docs/architecture.md "Log rotation"): it sends again frames it already sent
(the first frame of the new file, or a whole file from its start), and when the reader is
behind it can skip the rest of a file or whole files, silently. A fresh stream (a new logs
request with ``since``) is exact: it reads every retained file from ``since`` in order, then
follows. The ledger turns that into exact counts, or reported gaps:

* A frame is known by its timestamp and content (Docker stamps every message to the
  nanosecond). A frame consumed before is a re-send and is dropped, wherever it comes. The
  ledger remembers the ``limit`` newest frames (by timestamp): a frame no newer than the
  newest one forgotten is taken for a re-send too, and a check reaches back no further.
* A re-send repeats its frame's timestamp, so in the live part of a stream a frame stamped
  later than every frame remembered is new without a look-up (the common case: the decoder
  collects such frames per chunk, ``fast_point``/``add_new``). Their keys join the look-up set
  only when a later frame needs a look-up.
* A frame not consumed before is counted even when it is older than the cursor: a line the
  follow skipped and a re-read delivered. Such frames are ``recovered``.
* Each stream starts at a point: the cursor, or the verified point when a check is due. Its
  frames up to the cursor it began with are its catch-up; after that it is live. A re-sent or
  older frame in the live part means the follow jumped at a rotation: ``jumped`` tells the
  follower to end the stream and read again from the verified point (``verify``).
* The verified point: every line up to it was read by a fresh stream. It is the first frame
  a fresh stream from the start of the log delivered, or the cursor a check began with once
  that check went live.
* A stream that starts at a point whose frame it does not deliver first (its first frame is
  later) found that Docker deleted the file holding the point before it was read again: the
  lines between may be lost, and how many cannot be known. That is a ``gap``.
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Final

from exporter.timestamps import parse_timestamp

# Frames remembered per container for telling re-sends from new frames (a 10 MB log file of
# Ollama's 100-byte lines holds about 100,000). Each costs its timestamp and a 64-bit key in a
# block (about 40 bytes: 5 MB at the limit); a stream's checks that reach back to old frames
# put their keys in a set too (about 70 bytes more each, until those frames are forgotten).
HISTORY_LIMIT: Final = 131_072
_BLOCK: Final = 4096  # frames per block at most (a block goes once all its frames are forgotten)

# What ``Ledger.admit`` says of a frame.
RESENT: Final = -1
NEW: Final = 0
RECOVERED: Final = 1


@dataclass(frozen=True)
class Cursor:
    """The last consumed frame's timestamp and how many consumed frames carry it."""

    timestamp: bytes
    count: int


def newer(a: bytes, b: bytes) -> bool:
    """True if timestamp ``a`` is later than ``b`` (Docker's fixed-width RFC 3339 compares as
    bytes; anything else is parsed)."""
    if len(a) == len(b):
        return a > b
    return parse_timestamp(a) > parse_timestamp(b)


class _Block:
    """Remembered frames in timestamp order: their timestamps (of one width) and keys."""

    __slots__ = ("first", "indexed", "keys", "stamps", "width")

    def __init__(self, width: int, *, indexed: bool) -> None:
        self.width = width
        self.stamps = bytearray()  # the timestamps, back to back
        self.keys = array("q")
        self.first = 0  # frames before it are forgotten
        self.indexed = indexed  # its keys are in ``Ledger._seen``

    def stamp(self, i: int) -> bytes:
        w = self.width
        return bytes(self.stamps[i * w : (i + 1) * w])


class Ledger:
    """The consumed frames of one container's log, and where the current stream stands."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self._limit = limit
        self._high = limit + max(1, limit // 64)  # forget in batches, down to the limit
        self._width = 0  # the width of every timestamp seen; -1 once widths differ
        # Every remembered frame: in blocks in timestamp order as most arrive, else in a heap.
        # ``_seen`` holds the keys of the heap and of the blocks but the last ``_unindexed``
        # ones (frames later than all before them are added without a look at ``_seen``).
        self._seen: set[int] = set()
        self._blocks: deque[_Block] = deque()
        self._unindexed = 0
        self._count = 0  # frames remembered in blocks
        self._late: list[tuple[bytes, int]] = []
        self._newest = b""  # the newest timestamp ever remembered
        self._horizon = b""  # the newest timestamp forgotten: frames up to it are re-sends
        self.verified: Cursor | None = None
        self.check_due = False  # the next stream starts at the verified point
        self.unverified = False  # live frames were consumed after the verified point
        self.jumped = False  # the current stream re-sent or went back: end it, check
        self.gaps = 0  # running totals, for logs and tests
        self.recovered = 0
        self.resent = 0
        self._start: Cursor | None = None  # the point the stream began at
        self._began: Cursor | None = None  # the log's cursor when it began
        self._from_verified = False
        self._live = True
        self._first = True
        self._last = b""  # the newest frame consumed in the live part of the stream

    def start_point(self, cursor: Cursor | None) -> Cursor | None:
        """Where the next stream starts: the verified point when a check is due, else
        ``cursor`` (None: the beginning of the run)."""
        if not self.check_due:
            return cursor
        verified = self.verified
        if verified is not None and self._horizon and newer(self._horizon, verified.timestamp):
            return Cursor(self._horizon, 1)  # a check reaches back to what is remembered
        return verified

    def begin(self, cursor: Cursor | None) -> None:
        """A stream starts at ``start_point(cursor)``, ``cursor`` being the log's cursor."""
        self._start = self.start_point(cursor)
        self._from_verified = self.check_due and self.verified is not None
        self.check_due = False
        self.jumped = False
        self._began = cursor
        self._live = cursor is None
        self._first = True
        self._last = b""

    def verify(self) -> None:
        """Read again from the verified point with the next stream."""
        self.check_due = True

    def resent_frame(self, ts: bytes, key: int) -> tuple[bool, bool]:
        """Is the frame stamped ``ts`` whose (timestamp, content) hash is ``key`` a re-send?

        Returns (re-sent, recovered). Call ``remember`` once the frame's line is consumed.
        """
        if self._unindexed:
            self._index()
        if self._first:
            self._first = False
            start = self._start
            if start is not None and start.count and newer(ts, start.timestamp):
                self.gaps += 1  # the frame the stream began at is gone
        if key in self._seen or (self._horizon and not newer(ts, self._horizon)):
            self.resent += 1
            if self._live:
                self.jumped = True  # a re-send in the live part of the stream
            return True, False
        if not self._live:
            began = self._began
            if began is not None and not newer(ts, began.timestamp):
                self.recovered += 1  # before the cursor, never consumed: the follow skipped it
                return False, True
            self._go_live()
        elif self._last and newer(self._last, ts):
            self.jumped = True  # the live part went back to a frame never consumed
            self.recovered += 1
            return False, True
        return False, False

    def fast_point(self) -> bytes | None:
        """The newest timestamp remembered, when the stream is live past its first frame and
        every timestamp remembered has the same width (bytes compare as times); else None.

        A frame of that width stamped later is new: only a re-send repeats a timestamp. Hand
        such frames to ``add_new`` without asking ``admit``.
        """
        if self._live and self._last and self._width > 0:
            return self._newest
        return None

    def add_new(self, stamps: list[bytes], keys: list[int]) -> None:
        """Frames consumed in the live part of the stream, stamped in increasing order each later
        than ``fast_point()`` and of its width, with their keys."""
        if not stamps:
            return
        blocks = self._blocks
        block = blocks[-1] if blocks else None
        width = len(stamps[0])
        if block is None or block.indexed or block.width != width or len(block.keys) >= _BLOCK:
            block = _Block(width, indexed=False)
            blocks.append(block)
            self._unindexed += 1
        block.stamps += b"".join(stamps)
        block.keys.extend(keys)
        self._count += len(stamps)
        self._newest = self._last = stamps[-1]
        self.unverified = True
        if self._count + len(self._late) > self._high:
            self._forget()

    def admit(self, ts: bytes, key: int) -> int:
        """``resent_frame`` and ``remember`` for a line of one frame: RESENT, NEW or RECOVERED."""
        if self._live and self._last and len(ts) == self._width and ts > self._newest:
            self._keep(ts, key)  # later than every frame remembered: new
            self._last = ts
            self.unverified = True
            return NEW
        resent, recovered = self.resent_frame(ts, key)
        if resent:
            return RESENT
        self.remember(ts, key)
        return RECOVERED if recovered else NEW

    def _go_live(self) -> None:
        # The stream passed the cursor it began with: everything before was read afresh.
        if self._from_verified and self._began is not None:
            self.verified = self._began
            self.unverified = False
        self._live = True

    def remember(self, ts: bytes, key: int) -> None:
        """The frame is consumed: a later copy of it is a re-send."""
        if len(ts) != self._width:
            self._width = len(ts) if self._width == 0 else -1
        self._keep(ts, key)
        if self.verified is None:
            self.verified = Cursor(ts, 1)  # the first frame a stream from the start read
        if self._live:
            self.unverified = True
            if not self._last or newer(ts, self._last):
                self._last = ts

    def _index(self) -> None:
        # Add the keys of the blocks not yet in ``_seen``: the last ``_unindexed`` ones.
        blocks = self._blocks
        for i in range(len(blocks) - self._unindexed, len(blocks)):
            block = blocks[i]
            self._seen.update(block.keys[block.first :])
            block.indexed = True
        self._unindexed = 0

    def _keep(self, ts: bytes, key: int) -> None:
        if self._unindexed:
            self._index()
        self._seen.add(key)
        blocks = self._blocks
        block = blocks[-1] if blocks else None
        if block is None or not newer(block.stamp(len(block.keys) - 1), ts):
            if block is None or block.width != len(ts) or len(block.keys) >= _BLOCK:
                block = _Block(len(ts), indexed=True)
                blocks.append(block)
            block.stamps += ts
            block.keys.append(key)
            self._count += 1
        else:
            heapq.heappush(self._late, (ts, key))
        if not self._newest or newer(ts, self._newest):
            self._newest = ts
        if self._count + len(self._late) > self._high:
            self._forget()

    def _forget(self) -> None:
        # Oldest first (by timestamp), down to the limit; whole runs of a block at once.
        blocks, late, seen = self._blocks, self._late, self._seen
        excess = self._count + len(late) - self._limit
        while excess > 0:
            block = blocks[0] if blocks else None
            if late and (block is None or newer(block.stamp(block.first), late[0][0])):
                gone, gone_key = heapq.heappop(late)
                seen.discard(gone_key)
                excess -= 1
            else:
                assert block is not None
                first, size = block.first, len(block.keys)
                n = 1 if late else min(excess, size - first)
                stop = first + n
                if block.indexed:
                    seen.difference_update(block.keys[first:stop])
                gone = block.stamp(stop - 1)
                self._count -= n
                excess -= n
                if stop < size:
                    block.first = stop
                else:
                    blocks.popleft()
                    if not block.indexed:
                        self._unindexed -= 1
            if not self._horizon or newer(gone, self._horizon):
                self._horizon = gone

"""Log rotation in the pure log logic (exporter.logseen through exporter.logstream): re-sent
frames dropped, skipped lines recovered by a re-read, gaps reported.

The streams below replay what Docker 20.10's json-file follow was measured doing at a
rotation (docs/architecture.md "Log rotation"): the first frame of the new file sent twice,
a whole file sent again from its start, files skipped when the reader is behind."""

from __future__ import annotations

from exporter.classifier import LogClassifier
from exporter.containerlog import ContainerLog
from exporter.ledger import Cursor, Ledger
from exporter.timestamps import format_since
from tests.test_exporter_logstream import BASE_NS, OOM, frame, stamp

US = 1000


def line(i: int) -> bytes:
    """Frame i: an OOM line of its own, i microseconds after BASE_NS."""
    return frame(BASE_NS + i * US, b"n=%d " % i + OOM)


def lines(*ranges: range | list[int]) -> bytes:
    return b"".join(line(i) for r in ranges for i in r)


def make_log(live_since_ns: int = 0) -> ContainerLog:
    log = ContainerLog(LogClassifier(), live_since_ns, window_ns=0)
    log.start_run(None)
    log.begin_stream(tty=False)
    return log


def test_the_first_frame_of_a_new_file_sent_twice_counts_once_and_marks_a_jump() -> None:
    log = make_log()
    tally = log.feed(lines(range(0, 5), [4], range(5, 8)))
    assert (tally.lines, tally.error_lines["oom"], tally.recovered) == (8, 8, 0)
    assert log.jumped and log.ledger.resent == 1


def test_a_file_sent_again_from_its_start_counts_nothing_twice() -> None:
    log = make_log()
    first = log.feed(lines(range(0, 10)))
    assert not log.jumped
    again = log.feed(lines(range(5, 13)))  # the follow went back to the start of a file
    assert (first.lines, again.lines) == (10, 3)
    assert log.jumped and log.since_start == 13


def test_a_jump_reads_again_from_the_verified_point_and_recovers_skipped_lines() -> None:
    log = make_log()
    assert log.feed(lines(range(0, 5), range(8, 10))).lines == 7  # 5..7 skipped, silently
    log.feed(lines([8]))  # ...then the next rotation: a re-send
    assert log.jumped
    log.end_stream(run_over=False)
    assert log.since_param() == format_since(BASE_NS)  # the first frame a fresh stream read
    log.begin_stream(tty=False)
    tally = log.feed(lines(range(0, 13)))  # a fresh stream: every retained file, in order
    assert (tally.lines, tally.recovered, tally.gaps) == (6, 3, 0)  # 5, 6, 7 and 10, 11, 12
    assert not log.jumped and log.since_start == 13
    # having passed the cursor it began with, the check moved the verified point there
    assert log.ledger.verified == Cursor(stamp(BASE_NS + 9 * US), 1)
    assert log.cursor == Cursor(stamp(BASE_NS + 12 * US), 1)


def test_a_log_that_no_longer_reaches_back_to_the_verified_point_is_a_gap() -> None:
    log = make_log()
    log.feed(lines(range(0, 4), range(20, 22), [20]))  # skipped 4..19, then a re-send
    log.end_stream(run_over=False)
    log.begin_stream(tty=False)
    # Docker deleted the files holding 0..14 meanwhile: the re-read starts at 15
    tally = log.feed(lines(range(15, 25)))
    assert (tally.gaps, tally.recovered, tally.lines) == (1, 5, 8)
    assert log.since_start == 4 + 2 + 5 + 3


def test_a_reconnect_whose_cursor_frame_is_gone_is_a_gap() -> None:
    log = make_log()
    log.feed(lines(range(0, 10)))
    log.end_stream(run_over=False)  # the stream broke; no jump: resume at the cursor
    assert log.since_param() == format_since(BASE_NS + 9 * US)
    log.begin_stream(tty=False)
    assert log.feed(lines(range(9, 12))).gaps == 0  # the cursor's frame first: no gap
    log.end_stream(run_over=False)
    log.begin_stream(tty=False)
    tally = log.feed(lines(range(30, 32)))  # rotated away while the stream was down
    assert (tally.gaps, tally.lines) == (1, 2)


def test_a_run_end_check_rereads_once_and_finds_a_silently_skipped_tail() -> None:
    log = make_log()
    log.feed(lines(range(0, 3), range(6, 9)))  # a silent skip, no re-send after it
    assert not log.jumped and log.ledger.unverified
    log.end_stream(run_over=True)
    log.verify()  # the follower does this once when the run ended
    assert log.since_param() == format_since(BASE_NS)
    log.begin_stream(tty=False)
    tally = log.feed(lines(range(0, 9)))
    assert (tally.lines, tally.recovered, tally.gaps) == (3, 3, 0)


def test_recovered_lines_from_before_the_exporter_started_count_for_since_start_only() -> None:
    log = make_log(live_since_ns=BASE_NS + 3 * US)
    log.feed(lines(range(0, 2), range(5, 8), [5]))
    log.end_stream(run_over=False)
    log.begin_stream(tty=False)
    tally = log.feed(lines(range(0, 8)))  # 2 (history) and 3, 4 (live) recovered
    assert (tally.lines, tally.recovered) == (2, 2)
    assert log.since_start == 8


def test_frames_older_than_the_remembered_history_are_resends() -> None:
    ledger = Ledger(limit=4)
    ledger.begin(None)
    for i in range(10):
        ts = stamp(BASE_NS + i)
        assert ledger.resent_frame(ts, hash(ts)) == (False, False)
        ledger.remember(ts, hash(ts))
    old = stamp(BASE_NS + 2)
    assert ledger.resent_frame(old, hash(old + b"other")) == (True, False)  # forgotten: too old
    assert ledger.jumped


def test_tty_streams_drop_resent_lines_too() -> None:
    log = ContainerLog(LogClassifier(), 0, window_ns=0)
    log.start_run(None)
    log.begin_stream(tty=True)
    text = b"".join(stamp(BASE_NS + i) + b" n=%d " % i + OOM for i in [0, 1, 2, 1, 2, 3])
    assert log.feed(text).lines == 4 and log.jumped


def test_a_check_recovering_more_lines_than_remembered_loses_none_silently() -> None:
    log = make_log()
    log.ledger = Ledger(limit=24)  # forgets by timestamp, oldest first
    log.feed(lines(range(0, 10), range(50, 60), [55]))  # 10..49 skipped, then a re-send
    log.end_stream(run_over=False)
    log.begin_stream(tty=False)
    tally = log.feed(lines(range(0, 70)))
    assert (tally.lines, tally.recovered, tally.gaps) == (50, 40, 0)
    assert log.since_start == 70
    # the run ends; the check from the verified point (the cursor the re-read began with)
    # delivers that frame first: no gap, nothing counted twice
    log.end_stream(run_over=True)
    log.verify()
    log.begin_stream(tty=False)
    again = log.feed(lines(range(59, 70)))
    assert (again.lines, again.gaps) == (0, 0)


def test_a_check_reaches_back_only_to_what_is_remembered() -> None:
    log = make_log()
    log.ledger = Ledger(limit=8)
    log.feed(lines(range(0, 30), [29]))  # a re-send; frames 0..21 are forgotten
    log.end_stream(run_over=False)
    assert log.since_param() == format_since(BASE_NS + 21 * US)  # not 0, the verified point
    log.begin_stream(tty=False)
    tally = log.feed(lines(range(21, 32)))
    assert (tally.lines, tally.gaps) == (2, 0)
    log.end_stream(run_over=True)
    log.verify()
    log.begin_stream(tty=False)  # from 29, the cursor the check began with
    assert log.feed(lines(range(29, 32))).lines == 0


def test_frames_newer_than_all_remembered_skip_the_lookup_yet_stay_known() -> None:
    # Frames later than every remembered one are taken without a look-up, in chunks; a re-send
    # of any of them (across chunks and forgetting) is still dropped, and a distinct frame
    # with the newest frame's own timestamp still counts.
    log = make_log()
    log.ledger = Ledger(limit=16)
    for r in (range(0, 10), range(10, 20), range(20, 30)):
        assert log.feed(lines(r)).lines == 10
    assert not log.jumped
    same_ts = frame(BASE_NS + 29 * US, b"n=29 other " + OOM)
    tally = log.feed(lines([20]) + same_ts)  # 20: remembered, a re-send; then a new frame
    assert (tally.lines, log.ledger.resent) == (1, 1) and log.jumped
    assert log.cursor == Cursor(stamp(BASE_NS + 29 * US), 2)
    log.end_stream(run_over=False)
    log.begin_stream(tty=False)
    assert log.feed(lines(range(13, 30)) + same_ts).lines == 0  # 13 is forgotten: too old
    assert log.since_start == 31

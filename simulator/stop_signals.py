"""Stop signals as an exception in the main thread, so that a program's clean-up runs.

Python's default dispositions end a process on SIGTERM and SIGHUP without running a single
``finally`` (the demo left its containers and processes behind that way), and only SIGINT
becomes an exception. Inside ``StopSignals`` all three raise ``Stopped`` once; from then on,
and after ``stopping()``, more of them are noted but no longer raise, so that a second Ctrl-C
or a closed terminal cannot cut the clean-up short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived (a BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name, e.g. SIGTERM."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by the signal: 128 + its number."""
        return 128 + self.signum


class StopSignals:
    """While entered, SIGINT, SIGTERM and SIGHUP raise ``Stopped`` once; restored on exit.

    A signal the process inherited as ignored (``nohup``, a background job's SIGINT) stays
    ignored.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._raised = False
        self._previous: dict[int, Any] = {}  # what signal.getsignal answered

    def __enter__(self) -> StopSignals:
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def stopping(self) -> None:
        """The clean-up has begun: signals from now on must not interrupt it."""
        self._raised = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if not self._raised:
            self._raised = True
            raise Stopped(signum)


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """Hold stop signals back in the main thread until the block is done.

    For a step that the clean-up can only undo once it has finished: a container created by a
    request a signal interrupted would be created after the clean-up listed what to remove.
    A signal that arrives meanwhile is delivered when the block ends. Other threads: no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

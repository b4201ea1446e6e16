"""The paths of calls through a package's modules, traced while code runs (issue 22).

A *path* is a call stack read as the modules on it, outermost first, with the frames of one
module in a row counted once: ``http.webhooks > switch.engine > switch.intake``. Work handed
to a thread pool continues the path that handed it over, so a switch run after the HTTP answer
is traced on from the route that accepted it. Every call into a module of the package (a
generator resumed, a dataclass built, a property read) adds the path it was made on.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from types import FrameType
from typing import Any

Path = tuple[str, ...]


class CallPaths:
    """Traces the paths through ``package`` on every thread the traced code hands work to."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.paths: set[Path] = set()
        self.handed: list[futures.Future[Any]] = []
        self._prefix = threading.local()

    def _module(self, frame: FrameType) -> str | None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith(self.package + "."):
            return str(name[len(self.package) + 1 :])
        return None

    def path_at(self, frame: FrameType | None) -> Path:
        """The path of the stack ending at ``frame``, after the path that handed it over."""
        modules: list[str] = []
        while frame is not None:
            name = self._module(frame)
            if name is not None and (not modules or modules[-1] != name):
                modules.append(name)
            frame = frame.f_back
        path = [*getattr(self._prefix, "path", ()), *reversed(modules)]
        return tuple(m for i, m in enumerate(path) if i == 0 or path[i - 1] != m)

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and self._module(frame) is not None:
            self.paths.add(self.path_at(frame))

    def _submit(
        self, original: Callable[..., futures.Future[Any]]
    ) -> Callable[..., futures.Future[Any]]:
        tracer = self

        def submit(pool: Any, fn: Callable[..., Any], /, *args: Any, **kw: Any) -> Any:
            handed_over = tracer.path_at(sys._getframe(1))

            def traced() -> Any:
                tracer._prefix.path = handed_over
                sys.setprofile(tracer._profile)
                try:
                    return fn(*args, **kw)
                finally:
                    sys.setprofile(None)
                    tracer._prefix.path = ()

            future = original(pool, traced)
            tracer.handed.append(future)
            return future

        return submit

    @contextmanager
    def tracing(self) -> Iterator[CallPaths]:
        """Trace this thread, and the work it hands to thread pools, until the block ends."""
        original = futures.ThreadPoolExecutor.submit
        futures.ThreadPoolExecutor.submit = self._submit(original)  # type: ignore[method-assign]
        sys.setprofile(self._profile)
        try:
            yield self
        finally:
            sys.setprofile(None)
            futures.ThreadPoolExecutor.submit = original  # type: ignore[method-assign]

    def wait_for_handed(self, timeout: float) -> None:
        """Wait until the work handed to pools has run (raising what it raised)."""
        for future in list(self.handed):
            future.result(timeout)

    def reentered(self) -> list[Path]:
        """The paths that enter a module again after leaving it: a call back up."""
        return sorted(p for p in self.paths if len(set(p)) < len(p))

    def modules(self) -> set[str]:
        """Every module entered."""
        return {m for p in self.paths for m in p}

    def longest(self) -> Path:
        return max(sorted(self.paths), key=len)

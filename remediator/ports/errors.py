"""The one shape of an outside system's failure: the step that failed and why."""

from __future__ import annotations


class StepError(RuntimeError):
    """``system``'s ``step`` failed (on ``subject``, if one applies) because of ``cause``.

    The step travels on to SwitchFailed, the metric label and the HTTP answer.
    """

    def __init__(self, system: str, step: str, cause: str, subject: str | None = None) -> None:
        self.step = step
        self.cause = cause
        what = f"{system} {step}" + (f" of {subject}" if subject else "")
        super().__init__(f"{what} failed: {cause}")

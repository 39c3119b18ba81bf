"""A one-line progress report per trial event: done / total, running, failed, and the time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ray import tune

from sweeps.outcomes import input_failure


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def estimate_left(durations: list[float], remaining: int, running: int) -> float | None:
    """Time left if the remaining trials take the mean duration so far, `max(running, 1)` at a time."""
    if not durations or remaining <= 0:
        return None if remaining > 0 else 0.0
    return sum(durations) / len(durations) * remaining / max(running, 1)


class Progress(tune.Callback):
    """Prints `[phase] 3/8 done, 2 running, 0 failed, 1m20s elapsed, ~4m left` as trials start and end."""

    def __init__(self, phase: str, total: int, stream: TextIO = sys.stdout):
        self.phase, self.total, self.stream = phase, total, stream
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
        self.done = self.failed = 0
        self.t0 = time.monotonic()

    def _line(self) -> None:
        running = len(self.started)
        remaining = self.total - self.done - self.failed
        left = estimate_left(self.durations, remaining, running)
        eta = f", ~{format_duration(left)} left" if left is not None else ""
        print(
            f"[{self.phase}] {self.done}/{self.total} done, {running} running, {self.failed} failed, "
            f"{format_duration(time.monotonic() - self.t0)} elapsed{eta}",
            file=self.stream, flush=True,
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()
        self._line()

    def _ended(self, trial) -> float | None:
        start = self.started.pop(trial.trial_id, None)
        return None if start is None else time.monotonic() - start

    def on_trial_complete(self, iteration, trials, trial, **info):
        duration = self._ended(trial)
        if input_failure(trial.last_result) is not None:  # ended on its input (sweeps.outcomes): failed, not done
            self.failed += 1
            self._line()
            return
        if duration is not None and not (trial.last_result or {}).get("skipped"):
            self.durations.append(duration)
        self.done += 1
        self._line()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial)
        self.failed += 1
        self._line()

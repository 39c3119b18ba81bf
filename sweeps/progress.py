"""What the user sees and controls while a sweep runs: progress lines, the stop on Ctrl-C, a silent tracking server.

- `Progress` (a Ray Tune callback) prints `[phase] 3/8 done, 2 running, 0 failed, 1m20s elapsed, ~4m left` as trials
  start and end, and every `PROGRESS_EVERY_S` seconds while trials run, one line per running trial from what the
  trial last reported (`trial_line`): a discovery's step of its budget, density, last faithfulness, steps per second
  and time left; an edit's requests done of its shard. On a terminal the same lines are a live display (rich), kept
  at the bottom and redrawn every `LIVE_EVERY_S` seconds; in a log, plain lines.
- `Stop` turns the driver's first SIGINT or SIGTERM into a stop of the running Tune experiment (Tune saves its state,
  so a rerun resumes it) and its second into an exit at once.
- `TrackingWatch` warns when an http(s) tracking server has not answered for `TrackingWatch.after` seconds.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from ray import tune
from rich.console import Console
from rich.live import Live
from rich.text import Text

from circuitlib.errors import InputError
from sweeps.outcomes import input_failure

PROGRESS_EVERY_S = 30.0  # seconds between two blocks of per-trial lines while trials run (in a log)
LIVE_EVERY_S = 1.0  # seconds between two redraws of the live display (on a terminal)
STALE_S = 60.0  # a trial that has reported nothing for this long says since when

# What trials report to Tune for these lines (sweeps.trials): a discovery its step of the budget, current density,
# last held-out faithfulness and its speed; an edit trial how many requests of its shard are done, and its speed.
STEP, MAX_STEPS, DENSITY, FAITHFULNESS, STEPS_PER_S = "step", "max_steps", "density", "faithfulness", "steps_per_s"
REQUESTS_DONE, REQUESTS_TOTAL, REQUESTS_PER_S = "requests_done", "requests_total", "requests_per_s"
PROGRESS_KEYS = (STEP, MAX_STEPS, DENSITY, FAITHFULNESS, STEPS_PER_S, REQUESTS_DONE, REQUESTS_TOTAL, REQUESTS_PER_S)


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


def _number(result: Mapping[str, Any], key: str) -> float | None:
    value = result.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def trial_left(result: Mapping[str, Any], since: float = 0.0) -> float | None:
    """Seconds a running trial has left at the speed it reports, `since` seconds after the report: a discovery to the
    end of its step budget (it stops sooner once it has every target), an edit trial to the last request of its
    shard; None before it has a speed."""
    steps, budget, speed = _number(result, STEP), _number(result, MAX_STEPS), _number(result, STEPS_PER_S)
    if steps is not None and budget is not None and speed:
        return max(max(budget - steps, 0.0) / speed - since, 0.0)
    done, total = _number(result, REQUESTS_DONE), _number(result, REQUESTS_TOTAL)
    speed = _number(result, REQUESTS_PER_S)
    if done is not None and total is not None and speed:
        return max(max(total - done, 0.0) / speed - since, 0.0)
    return None


def trial_line(key: str, result: Mapping[str, Any], silent_for: float = 0.0) -> str:
    """One running trial, from the progress fields of its last results (`PROGRESS_KEYS`), `silent_for` seconds after
    the last of them: `discover/hierarchy/seed0: step 120/230, density 0.742, faithfulness 0.931, 0.52 steps/s,
    <=3m32s left` or `edit/full/shard0: 4/8 requests, 0.10 requests/s, ~40s left`; `starting` before its first
    report, and how long it has been silent where that is over `STALE_S` (an MLflow call it waits on, a slow step)."""
    parts: list[str] = []
    step, budget = _number(result, STEP), _number(result, MAX_STEPS)
    done, total = _number(result, REQUESTS_DONE), _number(result, REQUESTS_TOTAL)
    left = trial_left(result, silent_for)
    if step is not None:
        parts.append(f"step {step:.0f}/{budget:.0f}" if budget is not None else f"step {step:.0f}")
        if (density := _number(result, DENSITY)) is not None:
            parts.append(f"density {density:.3f}")
        if (faithful := _number(result, FAITHFULNESS)) is not None:
            parts.append(f"faithfulness {faithful:.3f}")
        if (speed := _number(result, STEPS_PER_S)) is not None:
            parts.append(f"{speed:.2f} steps/s")
        if left is not None:  # the budget's end: discovery ends sooner once it has snapshotted every target
            parts.append(f"<={format_duration(left)} left")
    elif done is not None:
        parts.append(f"{done:.0f}/{total:.0f} requests" if total is not None else f"{done:.0f} requests")
        if (speed := _number(result, REQUESTS_PER_S)) is not None:
            parts.append(f"{speed:.2f} requests/s")
        if left is not None:
            parts.append(f"~{format_duration(left)} left")
    elif silent_for >= STALE_S:  # loading the model and data, initialising the mask, fitting the head
        return f"{key}: started {format_duration(silent_for)} ago, no report yet"
    else:
        parts.append("starting")
    if silent_for >= STALE_S:
        parts.append(f"no report for {format_duration(silent_for)}")
    return f"{key}: {', '.join(parts)}"


def phase_left(
    lefts: Sequence[float | None], elapsed: Sequence[float], durations: Sequence[float], pending: int, slots: int
) -> float | None:
    """Time left of a phase: its running trials end after their `lefts` (one that has not said yet: once it is as old
    as a whole trial), and each of the `pending` ones starts in the first of the `slots` to come free and takes as long
    as a whole trial, the mean of those done (`durations`) or, before any is done, of the running ones that have said
    (`elapsed` + left). None where nothing says yet."""
    whole = list(durations) or [e + left for e, left in zip(elapsed, lefts, strict=True) if left is not None]
    mean = sum(whole) / len(whole) if whole else None
    ends = []
    for age, left in zip(elapsed, lefts, strict=True):
        if left is None and mean is None:
            return None
        ends.append(left if left is not None else max((mean or 0.0) - age, 0.0))
    if pending and mean is None:
        return None
    free = sorted(ends + [0.0] * max(slots - len(ends), 0 if ends else 1))  # a heap: when each slot comes free
    for _ in range(pending):
        heapq.heapreplace(free, free[0] + (mean or 0.0))
    return max(free, default=0.0)


def _key(trial: Any) -> str:
    """A trial's key (its MLflow run name), as the sweep names its trials; Tune's id where it has none."""
    config = getattr(trial, "config", None) or {}
    spec = config.get("trial") if isinstance(config, Mapping) else None
    return str(spec["key"]) if isinstance(spec, Mapping) and "key" in spec else str(trial.trial_id)


class Progress(tune.Callback):
    """Prints `[phase] 3/8 done, 2 running, 0 failed, 1m20s elapsed, ~4m left` as trials start and end, and every
    `every` seconds while trials run, that line and one per running trial (`trial_line`).

    With `live` (default: whether the stream is a terminal) the block is a live display at the bottom of the terminal
    instead, redrawn every LIVE_EVERY_S seconds; the start and end lines still print above it, as a record.

    Ray Tune pickles its callbacks with the experiment and a restored experiment brings them back: only the phase,
    the total and `every` are kept, so a resumed sweep counts from its own start and prints to its own stdout."""

    def __init__(
        self,
        phase: str,
        total: int,
        stream: TextIO | None = None,
        every: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        stop: Stop | None = None,
        live: bool | None = None,
    ):
        self.phase, self.total, self.stream, self.every, self.clock = phase, total, stream, every, clock
        out = stream or sys.stdout
        self.live: Live | None = None
        if out.isatty() if live is None else live:
            console = Console(file=out, force_terminal=True, soft_wrap=True)
            # the driver's other output (Ray's worker lines among it) prints above the display, where it is stdout
            mine = out is sys.stdout
            self.live = Live(
                console=console, auto_refresh=False, transient=True, redirect_stdout=mine, redirect_stderr=mine
            )
        self.stop = stop if stop is not None else STOP
        self.started: dict[str, float] = {}  # trial id -> when it started (this driver's clock)
        self.keys: dict[str, str] = {}  # trial id -> its key, for the running ones
        self.latest: dict[str, dict[str, Any]] = {}  # trial id -> the progress fields of its results so far
        self.heard: dict[str, float] = {}  # trial id -> when it last reported its progress (or started)
        self.durations: list[float] = []
        self.slots = 0  # the most trials seen running at once: how many run at a time
        self.done = self.failed = 0
        self.t0 = self.last_block = clock()

    def __getstate__(self) -> dict[str, Any]:
        return {"phase": self.phase, "total": self.total, "every": self.every}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["phase"], state["total"], every=state.get("every", PROGRESS_EVERY_S))

    def _print(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(Text(text))  # above the live display
            self._redraw()
        else:
            print(text, file=self.stream or sys.stdout, flush=True)

    def _redraw(self) -> None:
        """Show the block in the live display (started on first use, stopped when the phase ends)."""
        assert self.live is not None
        if not self.live.is_started:
            self.live.start()
        self.live.update(Text("\n".join(self.block()) if self.started else self.summary_line()), refresh=True)
        self.last_block = self.clock()

    def close(self) -> None:
        """End the live display; it clears itself, the start and end lines printed above it stay."""
        if self.live is not None and self.live.is_started:
            self.live.stop()

    def summary_line(self) -> str:
        now = self.clock()
        running = len(self.started)
        remaining = self.total - self.done - self.failed
        left = self.phase_left(now)
        if left is None:
            left = estimate_left(self.durations, remaining, running)
        eta = f", ~{format_duration(left)} left" if left is not None else ""
        return (
            f"[{self.phase}] {self.done}/{self.total} done, {running} running, {self.failed} failed, "
            f"{format_duration(now - self.t0)} elapsed{eta}"
        )

    def phase_left(self, now: float) -> float | None:
        ids = list(self.started)
        pending = max(self.total - self.done - self.failed - len(ids), 0)
        if not ids and not self.durations:
            return None
        lefts = [trial_left(self.latest.get(i, {}), now - self.heard.get(i, now)) for i in ids]
        return phase_left(
            lefts, [now - self.started[i] for i in ids], self.durations, pending, max(self.slots, len(ids))
        )

    def trial_lines(self) -> list[str]:
        """One line per running trial, in the order they started."""
        now = self.clock()
        return [
            trial_line(self.keys.get(i, i), self.latest.get(i, {}), now - self.heard.get(i, self.started[i]))
            for i in self.started
        ]

    def _line(self) -> None:
        self._print(self.summary_line())

    def block(self) -> list[str]:
        """The phase's line and one per running trial, indented under it."""
        return [self.summary_line(), *(f"  {line}" for line in self.trial_lines())]

    def running_keys(self) -> list[str]:
        """The keys of the trials running now (started, not ended), in the order they started."""
        return [self.keys.get(i, i) for i in self.started]

    def setup(self, **info):  # inside Tuner.fit, once Tune has set its own signal handlers (sweeps.progress.Stop)
        self.stop.attach(self)

    def on_trial_start(self, iteration, trials, trial, **info):
        now = self.clock()
        self.started[trial.trial_id] = self.heard[trial.trial_id] = now
        self.keys[trial.trial_id] = _key(trial)
        self.slots = max(self.slots, len(self.started))
        self._line()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        fields = {k: result[k] for k in PROGRESS_KEYS if k in result}
        if fields:
            self.latest.setdefault(trial.trial_id, {}).update(fields)
            self.heard[trial.trial_id] = self.clock()

    def on_step_end(self, iteration, trials, **info):
        if self.live is not None:
            if self.clock() - self.last_block >= LIVE_EVERY_S:
                self._redraw()
        elif self.started and self.clock() - self.last_block >= self.every:
            self.last_block = self.clock()
            self._print("\n".join(self.block()))

    def on_experiment_end(self, trials, **info):
        self.close()

    def _ended(self, trial) -> float | None:
        start = self.started.pop(trial.trial_id, None)
        for table in (self.keys, self.latest, self.heard):
            table.pop(trial.trial_id, None)
        return None if start is None else self.clock() - start

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

    def on_trial_recover(self, iteration, trials, trial, **info):  # failed, to be retried: pending until it restarts
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial)
        self.failed += 1
        self._line()


class Stop:
    """The sweep driver's SIGINT and SIGTERM: the first stops the sweep, the second exits at once.

    Ray Tune (2.60, `tune.tune._setup_signal_catching`) stops an experiment gracefully on SIGINT: it leaves its loop,
    saves the experiment state with the running trials as running (so `Tuner.restore` resumes them from their last
    checkpoints) and stops their actors. It installs that handler for SIGUSR1 too, always, and for SIGINT unless
    `TUNE_DISABLE_SIGINT_HANDLER=1`. The sweep sets that variable and keeps SIGINT and SIGTERM for itself (`install`),
    so it knows of every stop wherever it comes (in a phase, between phases, before Ray has started); inside a phase
    (`attach`, from `Progress.setup`) it calls the handler Tune set for SIGUSR1, Tune's own graceful stop. The driver
    then sees `requested`, starts nothing more and reports (`sweeps.size_sweep`). The second signal writes
    `last_words`, stops the local Ray cluster (`end_children`) and exits with 128 + the signal's number, without
    waiting for the trials."""

    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the signal that stopped the sweep
        self.last_words = ""  # the line written on the second signal
        self.progress: Progress | None = None  # the callback of the phase running now (or last)
        self._tune_stop: Callable[[int, Any], Any] | None = None
        # the handlers, Tune's switch and its logger's level before `install`
        self._before: tuple[dict[signal.Signals, Any], str | None, int] | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self, last_words: str = "") -> None:
        """A new sweep: nothing asked yet; take the signals (`take`) until `uninstall`."""
        self.last_words = last_words
        self.signal, self.progress, self._tune_stop = None, None, None
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._before = handlers, os.environ.get("TUNE_DISABLE_SIGINT_HANDLER"), logging.getLogger("ray.tune").level
        self.take()

    def uninstall(self) -> None:
        """Give the signals back as `install` found them (a sweep run in a process that goes on)."""
        if self._before is None:
            return
        handlers, switch, level = self._before
        self._before = None
        logging.getLogger("ray.tune").setLevel(level)
        if self.signal is None:  # a stopped sweep keeps the handler: a second signal during Ray's shutdown at exit
            for sig, handler in handlers.items():  # still exits at once, with its line, not a KeyboardInterrupt
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if switch is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = switch

    def take(self) -> None:
        """Take SIGINT and SIGTERM (in the main thread) and keep Tune off SIGINT; again after `ray.init`, which sets
        its own SIGTERM handler (exit at once)."""
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # the second: at once (a raw write: a signal may interrupt a print)
            if self.last_words:
                os.write(2, f"{self.last_words}\n".encode())
            end_children()
            os._exit(128 + signum)
        self.signal = signal.Signals(signum).name
        logging.getLogger("ray.tune").setLevel(logging.ERROR)  # its notices offer Tuner.restore, not the sweep's rerun
        self._stop_tune()

    def attach(self, progress: Progress | None = None) -> None:
        """Inside `Tuner.fit`, after Tune has installed its handlers: take the experiment's graceful stop, and use it
        now where the sweep was asked to stop before it could."""
        self.progress = progress
        handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        self._tune_stop = handler if callable(handler) and handler != self.handle else None
        if self.requested:
            self._stop_tune()

    def detach(self) -> None:
        """After `Tuner.fit`: no experiment to stop, and no live display left running (a stopped phase's too)."""
        self._tune_stop = None
        if self.progress is not None:
            self.progress.close()

    def _stop_tune(self) -> None:
        if self._tune_stop is not None and hasattr(signal, "SIGUSR1"):
            self._tune_stop(signal.SIGUSR1, None)

    def cut_short(self) -> list[str]:
        """The trials that ran when the sweep stopped (their keys)."""
        return self.progress.running_keys() if self.progress is not None else []


def end_children(timeout: float = 3.0) -> None:
    """Stop this process's children and wait for them, `timeout` seconds at most: a local Ray cluster's raylet, which
    then stops its workers and agents (killed with the driver, as they would be, it would leave its agents behind)."""
    import psutil

    try:
        children = psutil.Process().children()
        for child in children:
            child.terminate()
        _, alive = psutil.wait_procs(children, timeout=timeout)
        for child in alive:
            child.kill()
    except psutil.Error:
        pass


STOP = Stop()  # the driver's: Tune's callbacks are pickled with an experiment, so they find it here, not as a field


def stop_line(
    sweep: str,
    signame: str,
    phases: Sequence[tuple[str, int, Sequence[str], Sequence[str]]],
    not_started: Sequence[str],
    resume: str,
) -> str:
    """The one line a stopped sweep prints: for each phase that ran, (name, trials, finished keys, cut-short keys),
    then the phases not started, and the command that resumes it."""
    parts = []
    for phase, total, finished, cut in phases:
        left = total - len(finished) - len(cut)
        text = f"{phase} {len(finished)}/{total} finished"
        if cut:
            shown = ", ".join(cut[:5]) + (f" and {len(cut) - 5} more" if len(cut) > 5 else "")
            text += f", {len(cut)} cut short ({shown})"
        if left > 0:
            text += f", {left} not started"
        parts.append(text)
    parts += [f"{phase} not started" for phase in not_started]
    return f"sweep {sweep} stopped by {signame}: {'; '.join(parts)}; resume with: {resume}"


class TrackingWatch:
    """Probes a tracking server every `every` seconds from a daemon thread (`probe` raises `InputError` when it does
    not answer; an `http(s)` URI's `/health` by default) and writes one warning once it has not answered for `after`
    seconds, and one line when it answers again. Trials keep retrying their MLflow calls meanwhile (MLflow's client
    retries with backoff), so the sweep goes on; the warning says why its progress lines stand still."""

    def __init__(
        self,
        uri: str,
        probe: Callable[[], None] | None = None,
        every: float = 5.0,
        after: float = 45.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.uri, self.every, self.after, self.stream, self.clock = uri, every, after, stream, clock
        self.probe = probe or (lambda: _probe(uri, timeout=every))
        self.warned = False
        self.last_answer = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def watches(uri: str) -> bool:
        return uri.startswith(("http://", "https://"))

    def check(self) -> str | None:
        """Probe once; the line to write, if any."""
        try:
            self.probe()
        except InputError:
            silent = self.clock() - self.last_answer
            if silent >= self.after and not self.warned:
                self.warned = True
                return (
                    f"warning: tracking server {self.uri} not answering for {silent:.0f} s; retrying (trials "
                    "wait on their MLflow calls)"
                )
            return None
        line = None
        if self.warned:
            line = f"tracking server {self.uri} answers again, after {format_duration(self.clock() - self.last_answer)}"
        self.warned = False
        self.last_answer = self.clock()
        return line

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            line = self.check()
            if line is not None:
                print(line, file=self.stream or sys.stderr, flush=True)

    def start(self) -> TrackingWatch:
        self._thread = threading.Thread(target=self._run, name="tracking-watch", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()


def _probe(uri: str, timeout: float) -> None:
    from record import store  # MLflow's client, only where a server is watched

    store.probe(uri, timeout=timeout)

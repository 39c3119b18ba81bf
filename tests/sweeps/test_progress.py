"""What a running sweep prints (sweeps.progress), from fake trials and results: no Ray cluster, no MLflow server."""

from __future__ import annotations

import io
import os
import pickle
import signal
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from circuitlib.errors import InputError
from sweeps import progress
from sweeps.progress import Progress, Stop, TrackingWatch, phase_left, stop_line, trial_left, trial_line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_trial(trial_id: str, key: str, last_result: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(trial_id=trial_id, config={"trial": {"key": key}}, last_result=last_result or {})


DISCOVERY = {"step": 120, "max_steps": 230, "density": 0.74213, "faithfulness": 0.93149, "steps_per_s": 0.5}
EDIT = {"requests_done": 4, "requests_total": 8, "requests_per_s": 0.1}


def test_a_discovery_line_has_step_of_budget_density_faithfulness_speed_and_time_left():
    line = trial_line("discover/hierarchy/seed0", DISCOVERY)
    assert line == (
        "discover/hierarchy/seed0: step 120/230, density 0.742, faithfulness 0.931, 0.50 steps/s, <=3m40s left"
    )
    assert trial_left(DISCOVERY) == pytest.approx(220.0)  # (230 - 120) / 0.5: to the end of its budget


def test_an_edit_line_has_requests_done_of_total_and_time_left():
    assert trial_line("edit/full/shard0", EDIT) == "edit/full/shard0: 4/8 requests, 0.10 requests/s, ~40s left"
    assert trial_line("edit/full/shard0", {"requests_done": 0, "requests_total": 8}) == "edit/full/shard0: 0/8 requests"


def test_a_trial_without_a_report_is_starting_and_a_silent_one_says_for_how_long():
    assert trial_line("discover/x/seed0", {}) == "discover/x/seed0: starting"
    assert trial_line("discover/x/seed0", {}, silent_for=99) == "discover/x/seed0: started 1m39s ago, no report yet"
    fresh = trial_line("discover/x/seed0", {"step": 10, "max_steps": 50}, silent_for=30)
    assert fresh == "discover/x/seed0: step 10/50"
    assert trial_line("discover/x/seed0", {"step": 10, "max_steps": 50}, silent_for=95) == (
        "discover/x/seed0: step 10/50, no report for 1m35s"
    )


def test_phase_left_waits_for_the_running_then_the_pending_at_the_trials_pace():
    # Two running trials with 100 s and 40 s left; two pending, two at a time, each as long as the done one (300 s):
    # one starts at 40 s, the other at 100 s.
    assert phase_left([100.0, 40.0], [50.0, 20.0], [300.0], pending=2, slots=2) == pytest.approx(100 + 300)
    assert phase_left([100.0, 40.0], [50.0, 20.0], [300.0], pending=1, slots=2) == pytest.approx(40 + 300)
    # Before any trial is done, a pending one is as long as a running one will be (elapsed + left).
    assert phase_left([100.0], [50.0], [], pending=1, slots=1) == pytest.approx(100 + 150)
    # A running trial that has not said: as long as a whole trial, less its age; a free slot starts a pending one now.
    assert phase_left([None, 30.0], [100.0, 10.0], [250.0], pending=1, slots=3) == pytest.approx(250)
    assert phase_left([None], [50.0], [], pending=1, slots=1) is None  # nothing says yet
    assert phase_left([], [], [], pending=0, slots=0) == 0.0
    assert phase_left([], [], [60.0], pending=2, slots=0) == pytest.approx(120)  # between trials: one at a time


def test_progress_prints_a_block_every_interval_with_one_line_per_running_trial():
    clock, out = Clock(), io.StringIO()
    bar = Progress("discover", 3, stream=out, every=30, clock=clock, stop=Stop())
    one, two = fake_trial("a", "discover/determiner_noun/seed0"), fake_trial("b", "discover/hierarchy/seed0")
    bar.on_trial_start(0, [], one)
    bar.on_trial_start(0, [], two)
    assert out.getvalue().splitlines() == [
        "[discover] 0/3 done, 1 running, 0 failed, 0s elapsed",
        "[discover] 0/3 done, 2 running, 0 failed, 0s elapsed",
    ]
    clock.now += 10
    bar.on_trial_result(0, [], one, {**DISCOVERY, "training_iteration": 3, "run_id": "r"})
    bar.on_step_end(0, [])
    assert len(out.getvalue().splitlines()) == 2  # not yet: every 30 s
    clock.now += 25
    bar.on_step_end(0, [])
    block = out.getvalue().splitlines()[2:]
    # Trial a reported 220 s left 25 s ago: 195 s; b has not said: as long as a will have taken (35 + 195 s), less its
    # 35 s. The third starts when the first of them ends and takes as long: 195 + 230 s.
    assert block == [
        "[discover] 0/3 done, 2 running, 0 failed, 35s elapsed, ~7m05s left",
        "  discover/determiner_noun/seed0: step 120/230, density 0.742, faithfulness 0.931, 0.50 steps/s, <=3m15s left",
        "  discover/hierarchy/seed0: starting",
    ]
    clock.now += 5
    bar.on_step_end(0, [])
    assert len(out.getvalue().splitlines()) == 5  # the next block 30 s after this one
    clock.now += 30
    bar.on_trial_result(0, [], two, {**DISCOVERY, "step": 200})
    bar.on_step_end(0, [])
    block = out.getvalue().splitlines()[5:]
    # a: 160 s left, b: 60 s; the third starts after b, as long as their mean (70 + 160, 70 + 60 s): 60 + 180 s.
    assert block[0] == "[discover] 0/3 done, 2 running, 0 failed, 1m10s elapsed, ~4m00s left"
    assert block[1].endswith("<=2m40s left, no report for 1m00s")  # its last report was 60 s ago
    assert block[2] == (
        "  discover/hierarchy/seed0: step 200/230, density 0.742, faithfulness 0.931, 0.50 steps/s, <=1m00s left"
    )
    assert bar.running_keys() == ["discover/determiner_noun/seed0", "discover/hierarchy/seed0"]

    bar.on_trial_complete(0, [], one)  # ended: its fields go, the phase counts it done
    assert bar.running_keys() == ["discover/hierarchy/seed0"]
    # b's 60 s; the third starts now, in a's slot, as long as a took (70 s).
    assert out.getvalue().splitlines()[-1] == "[discover] 1/3 done, 1 running, 0 failed, 1m10s elapsed, ~1m10s left"


def test_an_edit_trials_fields_last_from_report_to_report():
    clock, out = Clock(), io.StringIO()
    bar = Progress("edit", 1, stream=out, every=30, clock=clock, stop=Stop())
    trial = fake_trial("e", "edit/full/shard0")
    bar.on_trial_start(0, [], trial)
    bar.on_trial_result(0, [], trial, {"requests_done": 0, "requests_total": 8})
    bar.on_trial_result(0, [], trial, {"edited": 4, **EDIT})
    clock.now += 30
    bar.on_trial_result(0, [], trial, {"run_id": "r"})  # a result without progress fields keeps the last ones
    bar.on_step_end(0, [])
    assert out.getvalue().splitlines()[-2:] == [
        "[edit] 0/1 done, 1 running, 0 failed, 30s elapsed, ~10s left",
        "  edit/full/shard0: 4/8 requests, 0.10 requests/s, ~10s left",
    ]
    clock.now += 70  # silent for 100 s
    bar.on_step_end(0, [])
    assert out.getvalue().splitlines()[-1] == (
        "  edit/full/shard0: 4/8 requests, 0.10 requests/s, ~0s left, no report for 1m40s"
    )


def test_a_trial_to_be_retried_waits_as_pending_until_it_restarts():
    out = io.StringIO()
    bar = Progress("discover", 1, stream=out, clock=Clock(), stop=Stop())
    trial = fake_trial("a", "discover/x/seed0")
    bar.on_trial_start(0, [], trial)
    bar.on_trial_result(0, [], trial, DISCOVERY)
    bar.on_trial_recover(0, [], trial)  # its worker died; Tune restarts it from its checkpoint
    assert bar.running_keys() == [] and bar.latest == {}
    bar.on_trial_start(0, [], trial)
    assert bar.running_keys() == ["discover/x/seed0"]
    assert out.getvalue().splitlines()[-1].startswith("[discover] 0/1 done, 1 running, 0 failed")


def test_a_restored_callback_starts_afresh():
    """Tune pickles callbacks with the experiment: a resumed sweep's comes back with its phase and total only."""
    bar = Progress("edit", 26, stream=io.StringIO(), every=12)
    bar.on_trial_start(0, [], fake_trial("e", "edit/full/shard0"))
    bar.done = 5
    again = pickle.loads(pickle.dumps(bar))
    assert (again.phase, again.total, again.every, again.done, again.started) == ("edit", 26, 12, 0, {})
    assert again.stream is None and again.stop is progress.STOP
    old = Progress.__new__(Progress)  # a callback pickled by an earlier circuitlib: other fields, no `every`
    old.__setstate__({"phase": "discover", "total": 2, "stream": None, "durations": [1.0], "done": 1})
    assert (old.phase, old.total, old.every, old.done) == ("discover", 2, progress.PROGRESS_EVERY_S, 0)


def test_the_stop_line_says_what_finished_what_was_cut_short_and_how_to_resume():
    line = stop_line(
        "tiny",
        "SIGINT",
        [("discover", 2, [], ["discover/determiner_noun/seed0", "discover/hierarchy/seed0"])],
        ["edit"],
        "python sweeps/size_sweep.py --preset tiny",
    )
    assert line == (
        "sweep tiny stopped by SIGINT: discover 0/2 finished, 2 cut short (discover/determiner_noun/seed0, "
        "discover/hierarchy/seed0); edit not started; resume with: python sweeps/size_sweep.py --preset "
        "tiny"
    )
    cut = [f"edit/full/shard{i}" for i in range(7)]
    line = stop_line("tiny", "SIGTERM", [("discover", 2, ["a", "b"], []), ("edit", 26, ["c"] * 3, cut)], [], "X")
    assert line == (
        "sweep tiny stopped by SIGTERM: discover 2/2 finished; edit 3/26 finished, 7 cut short "
        "(edit/full/shard0, edit/full/shard1, edit/full/shard2, edit/full/shard3, edit/full/shard4 and 2 "
        "more), 16 not started; resume with: X"
    )


@pytest.fixture
def signals():
    """Restores the process's SIGINT, SIGTERM and SIGUSR1 handlers and Tune's switch after a test that takes them."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    switch = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    if switch is None:
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    else:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = switch


def test_the_first_signal_stops_the_running_experiment_through_tunes_own_handler(signals):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop = Stop()
    stop.install("last words")
    assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune leaves SIGINT to the sweep
    assert signal.getsignal(signal.SIGINT) == stop.handle and signal.getsignal(signal.SIGTERM) == stop.handle
    stopped: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: stopped.append(signum))  # as Tune.fit sets it
    bar = Progress("discover", 2, stream=io.StringIO(), stop=stop)
    bar.setup()  # inside Tuner.fit
    bar.on_trial_start(0, [], fake_trial("a", "discover/x/seed0"))
    signal.raise_signal(signal.SIGTERM)
    assert stop.requested and stop.signal == "SIGTERM" and stopped == [signal.SIGUSR1]
    assert stop.cut_short() == ["discover/x/seed0"]
    stop.detach()  # Tuner.fit returned
    stop.uninstall()  # run_sweep returned after a stop: the handler stays, so a second signal at exit is handled
    assert signal.getsignal(signal.SIGINT) == stop.handle
    stop.signal = None
    stop._before = ({signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}, "1", 0)
    stop.uninstall()  # a sweep that ran to its end: the signals as they were
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_a_signal_before_the_experiment_stops_it_as_it_starts(signals):
    stop = Stop()
    stop.install()
    signal.raise_signal(signal.SIGINT)  # before any Tuner.fit: only noted
    assert stop.requested and stop.signal == "SIGINT"
    stopped: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: stopped.append(signum))
    stop.attach(None)  # the next Tuner.fit stops at once
    assert stopped == [signal.SIGUSR1]


def test_tracking_watch_warns_once_after_the_silence_and_says_when_it_answers_again():
    clock = Clock()
    answering = [True]

    def probe() -> None:
        if not answering[0]:
            raise InputError("no answer")

    watch = TrackingWatch("http://mlflow:5000", probe=probe, every=5, after=45, clock=clock)
    assert watch.check() is None
    answering[0] = False
    clock.now += 30
    assert watch.check() is None  # silent for 30 s: not yet
    clock.now += 20
    assert watch.check() == (
        "warning: tracking server http://mlflow:5000 not answering for 50 s; retrying (trials "
        "wait on their MLflow calls)"
    )
    clock.now += 60
    assert watch.check() is None  # once
    answering[0] = True
    assert watch.check() == "tracking server http://mlflow:5000 answers again, after 1m50s"
    assert watch.check() is None
    assert TrackingWatch.watches("http://x") and not TrackingWatch.watches("sqlite:///x.db")


def test_tracking_watch_probes_a_server_that_is_not_there():
    clock = Clock()
    watch = TrackingWatch("http://127.0.0.1:9", every=1, after=0, clock=clock)  # the discard port: nothing listens
    line = watch.check()
    assert line is not None and line.startswith("warning: tracking server http://127.0.0.1:9 not answering for 0 s")


def test_what_the_trials_report_is_what_the_lines_read():
    from sweeps.trials import discovery_progress, edit_progress

    row = {"step": 120, "epoch": 3, "loss": 0.2, "density": 0.74213, "faithfulness": 0.93149, "kl": 0.01}
    assert trial_line("discover/hierarchy/seed0", discovery_progress(row, 230, 0.5)) == trial_line(
        "discover/hierarchy/seed0", DISCOVERY
    )
    assert trial_line("d", discovery_progress({}, 230, None)) == "d: step 0/230, density 1.000"  # before a row
    assert trial_line("edit/full/shard0", edit_progress(4, 8, 0.1)) == trial_line("edit/full/shard0", EDIT)


def test_a_trial_worker_drops_the_exit_a_finalizer_cannot_raise(monkeypatch):
    """Ray's SIGTERM handler raises SystemExit in a stopped actor, at times inside a finalizer, where Python can only
    print it: a traceback in the driver's output for nothing; every other unraisable error is still printed."""
    from sweeps.trials import quiet_worker

    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    quiet_worker()
    quiet_worker()  # each trial of a reused actor: wrapped once
    hook: Any = sys.unraisablehook
    hook(SimpleNamespace(exc_value=SystemExit(1)))
    hook(SimpleNamespace(exc_value=ValueError("x")))
    assert [type(u.exc_value) for u in seen] == [ValueError]


def test_the_resume_command_is_the_command_as_given(monkeypatch, tmp_path):
    from sweeps.size_sweep import resume_command

    monkeypatch.setattr(sys, "argv", ["sweeps/size_sweep.py", "--preset", "tiny"])
    monkeypatch.chdir(tmp_path)  # an interpreter outside the working directory: `python`
    assert resume_command("size_sweep", ["--preset", "tiny", "--name", "a b"]) == (
        "python sweeps/size_sweep.py --preset tiny --name 'a b'"
    )
    assert resume_command("circuitlib sweep", ["--preset", "tiny"]) == "circuitlib sweep --preset tiny"
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))  # make demo's
    assert resume_command("size_sweep", ["--preset", "smollm2-cpu"]) == (
        ".venv/bin/python sweeps/size_sweep.py --preset smollm2-cpu"
    )


def test_on_a_terminal_progress_is_a_live_display_redrawn_each_second():
    clock, out = Clock(), io.StringIO()
    bar = Progress("discover", 2, stream=out, every=30, clock=clock, stop=Stop(), live=True)
    trial = fake_trial("a", "discover/determiner_noun/seed0")
    bar.on_trial_start(0, [], trial)
    assert bar.live is not None and bar.live.is_started
    clock.now += 10
    bar.on_trial_result(0, [], trial, {**DISCOVERY, "training_iteration": 3, "run_id": "r"})
    before = out.getvalue()
    bar.on_step_end(0, [])  # redrawn at once, not after 30 s
    drawn = out.getvalue()[len(before) :]
    assert "discover/determiner_noun/seed0: step 120/230, density 0.742" in drawn
    assert "\x1b[" in drawn  # a terminal's redraw (cursor moves), not a plain line
    clock.now += 0.5
    bar.on_step_end(0, [])
    assert len(out.getvalue()) == len(before) + len(drawn)  # not twice within a second
    bar.on_trial_complete(0, [], trial)
    assert "[discover] 1/2 done, 0 running, 0 failed, 10s elapsed" in out.getvalue()
    bar.on_experiment_end([])
    assert not bar.live.is_started


def test_in_a_log_progress_is_plain_lines():
    class Log(io.StringIO):
        def isatty(self) -> bool:
            return False

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress("edit", 1, stream=Log(), stop=Stop()).live is None
    assert Progress("edit", 1, stream=Terminal(), stop=Stop()).live is not None

"""Trials a retry of their Tune experiment cannot help: those that fail on their input end at once with one line, not a
retry; those whose checkpoint Tune lost run again from the start (`lost_checkpoints`).

Ray Tune (2.x) retries every error a trainable raises up to `FailureConfig.max_failures` times, whatever the error.
So a trial that meets an error of its input (`INPUT_ERRORS`: an `InputError`, a file it may not write, a file that is
not there) does not raise it: it reports one last result, `{INPUT_ERROR: line, DRIVER: driver}`, and returns. Tune
ends it TERMINATED after one run, and the driver prints the line (`input_failures`). `DRIVER` names the driver that
ran the trial (a fresh id per run of the sweep command), so a rerun of the sweep tells an input failure of its own from
one a restored Tune experiment still holds from an earlier run: the earlier one's trial runs again (the input may have
been fixed since), the sweep's own is not retried.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow.fs

from circuitlib.errors import InputError

INPUT_ERROR = "input_error"  # the one line of a trial that failed on its input
DRIVER = "driver"  # which run of the sweep command ran it
INPUT_ERRORS: tuple[type[BaseException], ...] = (InputError, PermissionError, FileNotFoundError)


def input_error_line(exc: BaseException) -> str | None:
    """One line naming the input, where `exc` is an error a retry cannot fix; None for any other error."""
    if not isinstance(exc, INPUT_ERRORS):
        return None
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def input_failure(result: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(driver, line) where a trial's last result says it failed on its input; None otherwise."""
    if not result or not result.get(INPUT_ERROR):
        return None
    return str(result.get(DRIVER, "")), str(result[INPUT_ERROR])


def input_failures(results: Iterable[Any], driver: str) -> tuple[dict[str, str], set[str]]:
    """The trials of a Tune result grid that failed on their input: {key: line} of those `driver` ran, and the keys
    of those an earlier driver ran (their failure is on record, but they did not run this time)."""
    ours: dict[str, str] = {}
    earlier: set[str] = set()
    for result in results:
        failure = input_failure(getattr(result, "metrics", None)) if result.error is None else None
        if failure is None or result.config is None:
            continue
        key = result.config["trial"]["key"]
        if failure[0] == driver:
            ours[key] = failure[1]
        else:
            earlier.add(key)
    return ours, earlier


def lost_checkpoints(results: Iterable[Any]) -> set[str]:
    """The keys of the trials of a Tune result grid that ended in an error while the checkpoint Tune holds for them
    is gone from storage. Tune deletes a trial's older checkpoint when it registers a newer one and records that in
    its experiment state only later, so a driver killed in between leaves a state whose checkpoint no longer exists;
    every restore of it then fails the same way, so the trial can only start over (in a new experiment)."""
    lost = set()
    for result in results:
        checkpoint = getattr(result, "checkpoint", None)
        if result.error is None or checkpoint is None or result.config is None:
            continue
        if checkpoint.filesystem.get_file_info(checkpoint.path).type == pyarrow.fs.FileType.NotFound:
            lost.add(result.config["trial"]["key"])
    return lost

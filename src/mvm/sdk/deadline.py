"""Bounding a blocking runtime call that has no timeout of its own (start, fork).

The call runs in a daemon thread; past the deadline the caller gets a
:class:`~mvm.errors.DeadlineError` at once, and whatever the call produces
when it does finish is handed to ``late`` (the SDK removes the VM it
started), so a timed-out ``create`` leaves no VM behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from mvm.errors import DeadlineError

T = TypeVar("T")


def bounded(fn: Callable[[], T], timeout: float, what: str,
            late: Callable[[T], None] | None = None) -> T:  # fmt: skip
    """``fn()``, or ``DeadlineError`` after ``timeout`` seconds."""
    lock = threading.Lock()
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:  # handed to the caller (or dropped when it gave up)
            with lock:
                box["error"] = exc
            done.set()
            return
        with lock:
            abandoned = "abandoned" in box
            box["value"] = value
        done.set()
        if abandoned and late is not None:
            late(value)

    t = threading.Thread(target=run, name=f"mvm-sdk-{what}", daemon=True)
    t.start()
    if not done.wait(timeout):
        with lock:
            if "value" not in box and "error" not in box:
                box["abandoned"] = True
                raise DeadlineError(f"{what}: timed out after {timeout:g}s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]

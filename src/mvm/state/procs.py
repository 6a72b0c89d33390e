"""Is this process still the one we started?  Pids are recycled, so every
liveness check compares the process start time recorded at spawn (field 22
of ``/proc/PID/stat``) and treats zombies as dead."""

from __future__ import annotations

from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start: int | None) -> bool:
    """``pid`` runs, is not a zombie, and (when ``start`` is known) is the same process."""
    if not pid or pid <= 0:
        return False
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return False
    if start is not None:
        try:
            return int(fields[19]) == start
        except (IndexError, ValueError):
            return False
    return True

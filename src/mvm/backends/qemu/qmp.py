"""A synchronous QMP session over ``qemu.qmp``, with timeouts, whose socket
errors surface as ``BackendError`` (the one seam where they are translated).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from mvm.errors import BackendError


def command(sock: Path, cmd: str, timeout: float = 5.0, **args: Any) -> Any:
    """Connect to ``sock``, run one QMP command, return its result."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    mon = QEMUMonitorProtocol(str(sock))
    try:
        mon.connect(negotiate=True)
        mon.settimeout(timeout)
        reply = mon.cmd_raw(cmd, args or None)
    except (OSError, EOFError) as exc:
        raise BackendError(f"QMP {cmd} on {sock}: {exc}") from exc
    except Exception as exc:  # qemu.qmp raises its own tree; translate it here
        raise BackendError(f"QMP {cmd} on {sock}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):  # closing a dead socket is not an error
            mon.close()
    if isinstance(reply, dict) and "error" in reply:
        raise BackendError(f"QMP {cmd}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return") if isinstance(reply, dict) else reply

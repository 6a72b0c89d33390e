"""One connect attempt to a Unix stream socket, shared by the host ends of the guest
channels (:mod:`mvm.channels`) and ``mvmctl exec``'s path (:mod:`mvm.runtime.guest`).

Kept in its own module with only ``os`` and ``socket``: the exec path must not pay
for the imports :mod:`mvm.channels` brings (``dataclasses`` via the machine spec).
"""

from __future__ import annotations

import os
import socket


def try_connect(path: str | os.PathLike[str]) -> socket.socket | None:
    """A connected socket, or None when nothing listens at ``path`` (yet)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fspath(path))
        return s
    except OSError:
        s.close()
        return None

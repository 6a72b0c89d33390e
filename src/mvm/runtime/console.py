"""Attach a terminal (or pipe) to a VM's serial console.

The hypervisor itself writes every console byte to ``console.log``; this
pump only copies the console socket (:func:`mvm.channels.connect_console`)
to stdout and, for accessible images, stdin to the guest.  Ctrl-C stays a
signal (ISIG kept) so it stops the VM as documented.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """Raw mode (every key, Ctrl-C included, goes to the guest's pty); restored on exit."""
    import tty

    if not os.isatty(fd):
        yield
        return
    old = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """No echo, no line buffering, signals kept; restored on exit."""
    if not os.isatty(fd):
        yield
        return
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~(termios.ECHO | termios.ICANON)
    new[1] &= ~termios.ICRNL  # send CR as typed; the guest's tty maps it
    new[6][termios.VMIN] = 1
    new[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, new)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def pump(
    sock: socket.socket, interactive: bool, keep_going: Callable[[], bool], poll: float = 0.25
) -> None:
    """Copy console → stdout (and stdin → console when interactive) until EOF
    or ``keep_going()`` turns false."""
    out = sys.stdout.buffer
    stdin_fd = sys.stdin.fileno() if interactive else -1
    watch: list[int] = [sock.fileno()] + ([stdin_fd] if stdin_fd >= 0 else [])
    while True:
        ready, _, _ = select.select(watch, [], [], poll)
        if sock.fileno() in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return
            out.write(data)
            out.flush()
        if stdin_fd in ready:
            data = os.read(stdin_fd, 4096)
            if not data:
                watch.remove(stdin_fd)
                stdin_fd = -1
            else:
                with contextlib.suppress(OSError):
                    sock.sendall(data)
        if not ready and not keep_going():
            return

"""One guest connection → the proxy's Unix socket (run by QEMU per connection).

QEMU's ``guestfwd=tcp:IP:PORT-cmd:…`` starts this program for every TCP
connection the guest opens to the proxy's address, with the connection on
stdin/stdout.  It relays bytes both ways until both directions are closed.
Standard library only, started with ``python -I -S`` (fast, and it never
imports anything from the environment).  If the proxy is not there, the
connection is simply closed: egress fails closed.
"""

import contextlib
import os
import selectors
import socket
import sys
import time

BUF = 256 << 10


def main(path: str) -> int:
    guest = socket.socket(fileno=os.dup(0))
    proxy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 3
    while True:
        try:
            proxy.connect(path)
            break
        except OSError:
            if time.monotonic() > deadline:
                return 1
            time.sleep(0.05)
    sel = selectors.DefaultSelector()
    peers = {guest: proxy, proxy: guest}
    for s in peers:
        s.setblocking(True)
        sel.register(s, selectors.EVENT_READ)
    open_dirs = 2
    while open_dirs:
        events = sel.select(timeout=600)
        if not events:  # idle for ten minutes: the proxy's own timeouts are shorter
            return 0
        for key, _ in events:
            src = key.fileobj
            assert isinstance(src, socket.socket)
            try:
                data = src.recv(BUF)
            except OSError:
                data = b""
            dst = peers[src]
            if data:
                try:
                    dst.sendall(data)
                    continue
                except OSError:
                    return 0
            sel.unregister(src)
            open_dirs -= 1
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

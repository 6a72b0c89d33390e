"""DNS-over-TCP client helper for the network tests (no tests here)."""

from __future__ import annotations

import socket
import struct


def query(s: socket.socket, name: str) -> str | None:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    msg = struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + q + struct.pack("!2H", 1, 1)
    s.sendall(struct.pack("!H", len(msg)) + msg)
    n = struct.unpack("!H", s.recv(2))[0]
    resp = b""
    while len(resp) < n:
        resp += s.recv(n - len(resp))
    rcode = struct.unpack("!H", resp[2:4])[0] & 0xF
    if rcode or struct.unpack("!H", resp[6:8])[0] == 0:
        return None
    return socket.inet_ntoa(resp[-4:])

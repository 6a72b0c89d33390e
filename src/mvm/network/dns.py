"""A tiny DNS responder for the guest: allowed names resolve to the proxy's
guest-visible address, every other name gets NXDOMAIN.

So a program that ignores ``HTTP_PROXY`` still connects to the proxy (which
routes by ``Host``/SNI and applies the policy), and a refused name does not
even resolve.  Only the question section of a query is parsed (bounded,
no compression pointers: a query never needs them); anything else is
answered FORMERR or dropped.  Served over TCP (RFC 1035 4.2.2 length
prefix), because QEMU's guest forwards are TCP only; the guest's
resolv.conf says ``options use-vc``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from mvm.errors import NetworkError

TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, FORMERR, NXDOMAIN, NOTIMP = 0, 1, 3, 4
TTL = 5
MAX_MESSAGE = 512


@dataclass(frozen=True)
class Question:
    ident: int
    flags: int
    name: str
    qtype: int
    qclass: int
    raw: bytes  # the question section as received (echoed in the answer)


def parse_query(msg: bytes) -> Question:
    """The first question of a standard query; raises NetworkError on anything odd."""
    if len(msg) < 12 or len(msg) > MAX_MESSAGE:
        raise NetworkError("dns: bad message length")
    ident, flags, qd, an, ns, _ar = struct.unpack("!6H", msg[:12])
    if flags & 0x8000 or (flags >> 11) & 0xF != 0 or qd != 1 or an or ns:
        raise NetworkError("dns: not a standard query with one question")
    pos, labels, total = 12, [], 0
    while True:
        if pos >= len(msg):
            raise NetworkError("dns: truncated name")
        n = msg[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(msg):
            raise NetworkError("dns: bad label")
        total += n + 1
        if total > 255:
            raise NetworkError("dns: name too long")
        try:
            labels.append(msg[pos : pos + n].decode("ascii").lower())
        except UnicodeDecodeError:
            raise NetworkError("dns: non-ASCII label") from None
        pos += n
    if pos + 4 > len(msg):
        raise NetworkError("dns: truncated question")
    qtype, qclass = struct.unpack("!2H", msg[pos : pos + 4])
    return Question(ident, flags, ".".join(labels), qtype, qclass, msg[12 : pos + 4])


def answer(q: Question, address: str | None) -> bytes:
    """The response to ``q``: ``address`` for A queries (None: NXDOMAIN)."""
    rd = q.flags & 0x0100
    if q.qclass != CLASS_IN:
        rcode, answers = NOTIMP, b""
    elif address is None:
        rcode, answers = NXDOMAIN, b""
    elif q.qtype == TYPE_A:
        rdata = ipaddress.IPv4Address(address).packed
        answers = b"\xc0\x0c" + struct.pack("!2HIH", TYPE_A, CLASS_IN, TTL, 4) + rdata
        rcode = NOERROR
    else:  # the name exists, but only as IPv4 (the proxy's guest address)
        rcode, answers = NOERROR, b""
    flags = 0x8000 | 0x0400 | rd | 0x0080 | rcode  # response, authoritative, RA
    header = struct.pack("!6H", q.ident, flags, 1, 1 if answers else 0, 0, 0)
    return header + q.raw + answers


def formerr(msg: bytes) -> bytes | None:
    if len(msg) < 2:
        return None
    return msg[:2] + struct.pack("!5H", 0x8000 | FORMERR, 0, 0, 0, 0)

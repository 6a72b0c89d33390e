"""Frames of the agent protocol (docs/agent-protocol.md), version 1.

A frame is a 16-byte header — magic ``MVA1``, a type byte, three zero bytes,
the stream id and the payload length (both u32 big-endian) — and the payload.
Types: ``J`` a JSON object, ``O`` stdout / file data from the guest, ``E``
stderr, ``I`` stdin / file data to the guest.

Whatever arrives from the guest is untrusted: :class:`Decoder` caps the
payload size, skips bytes until the next magic (how both ends resync after
a reconnect) and turns a JSON payload into a dict or a :class:`ProtocolError`.
"""

from __future__ import annotations

import json
import struct

from mvm.errors import ProtocolError

MAGIC = b"MVA1"
HEADER = struct.Struct(">4sB3xII")
HEADER_SIZE = HEADER.size  # 16
MAX_PAYLOAD = 1 << 20  # both directions; the guest enforces the same cap
JSON, STDOUT, STDERR, STDIN = b"J", b"O", b"E", b"I"
TYPES = frozenset((JSON, STDOUT, STDERR, STDIN))
CONTROL_STREAM = 0  # hello only
__all__ = ["Decoder", "Frame", "ProtocolError", "encode", "encode_json"]


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Frame:
    __slots__ = ("payload", "stream", "type")

    def __init__(self, type_: bytes, stream: int, payload: bytes) -> None:
        self.type, self.stream, self.payload = type_, stream, payload

    def __repr__(self) -> str:
        return f"Frame({self.type!r}, {self.stream}, {len(self.payload)} bytes)"

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object (only for ``J`` frames)."""
        try:
            obj = json.loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("the guest agent sent a malformed JSON message") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
            raise ProtocolError("the guest agent sent a message without an op")
        return obj


def encode(type_: bytes, stream: int, payload: bytes) -> bytes:
    if type_ not in TYPES or not 0 <= stream < 1 << 32 or len(payload) > MAX_PAYLOAD:
        raise ValueError("invalid frame")
    return HEADER.pack(MAGIC, type_[0], stream, len(payload)) + payload


def encode_json(stream: int, msg: dict[str, Any]) -> bytes:
    return encode(JSON, stream, json.dumps(msg, separators=(",", ":")).encode())


class Decoder:
    """Incremental frame decoder: ``feed`` bytes, get back whole frames.

    Garbage (bytes before a magic, an unknown type, an oversized length) is
    skipped one byte at a time, so a stream that starts mid-frame, as after a
    reconnect, finds the next real header; ``skipped`` counts what was dropped.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.buf = bytearray()
        self.max_payload = max_payload
        self.skipped = 0

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames: list[Frame] = []
        buf = self.buf
        off = 0
        while len(buf) - off >= HEADER_SIZE:
            if buf[off : off + 4] != MAGIC:
                nxt = buf.find(MAGIC, off + 1)
                skip = (nxt if nxt >= 0 else max(off + 1, len(buf) - 3)) - off
                self.skipped += skip
                off += skip
                continue
            _magic, t, stream, n = HEADER.unpack_from(buf, off)
            pad_ok = buf[off + 5 : off + 8] == b"\0\0\0"
            if bytes((t,)) not in TYPES or n > self.max_payload or not pad_ok:
                self.skipped += 1
                off += 1
                continue
            if len(buf) - off < HEADER_SIZE + n:
                break
            start = off + HEADER_SIZE
            frames.append(Frame(bytes((t,)), stream, bytes(buf[start : start + n])))
            off = start + n
        del buf[:off]
        return frames

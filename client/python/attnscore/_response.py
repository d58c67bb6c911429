"""ScoreResponse bytes to a ScoreReply whose tensors are views of those bytes (no copy).

Why: a response's tensors are most of its bytes (B8 H8 L512 float32 logits are 64 MiB). Parsing
them with protobuf copies them into the message, and reading `tensor.data` copies them again:
45-50 ms for 64 MiB here, more than the server takes to compute them. This walks the message's
few small fields by hand and keeps each tensor's `data` as a memoryview of the response bytes
that grpcio hands the deserializer, which numpy then reads in place.

Anything the walker does not expect (a message field given twice, which protobuf would merge;
a malformed or truncated message) is handed to protobuf's own parser instead, so the result is
always what protobuf would give, or protobuf's DecodeError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from attnscore._proto import attnscore_pb2 as pb

# ScoreResponse field numbers (proto/attnscore/v1/attnscore.proto).
_REQUEST_ID, _TIMING, _ERROR = 1, 5, 6
_TENSORS = {2: "logits", 3: "probs", 4: "context"}
# Tensor field numbers.
_DTYPE, _SHAPE, _DATA, _SHARED_MEMORY = 1, 2, 3, 4
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class WireTensor:
    """An attnscore.v1.Tensor whose data is a view of the response (or a copy, on the
    protobuf path)."""

    dtype: int
    shape: Tuple[int, ...]
    data: memoryview
    # Set when the request placed this output in shared memory (data is then empty).
    shared_memory: Optional[pb.SharedMemoryRange] = None


@dataclass
class ScoreReply:
    """What decode_response reads of a ScoreResponse."""

    request_id: str = ""
    tensors: Dict[str, WireTensor] = field(default_factory=dict)
    timing: pb.Timing = field(default_factory=pb.Timing)
    error: Optional[pb.Error] = None


class _Unexpected(Exception):
    """The bytes are not in the shape the walker handles: protobuf parses them instead."""


def _varint(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            break
    raise _Unexpected()


def _signed(value: int, bits: int) -> int:
    """A varint's value as protobuf's int32/int64/enum (two's complement, truncated)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _fields(buf: bytes, pos: int, end: int):
    """(number, wire type, value or start, end) for each field in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Unexpected()
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise _Unexpected()
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            if pos > end:
                raise _Unexpected()
        else:  # groups: not in this message
            raise _Unexpected()


def _tensor(buf: bytes, view: memoryview, start: int, end: int) -> WireTensor:
    dtype, shape, data, shared_memory = 0, [], view[0:0], None
    for number, wire, a, b in _fields(buf, start, end):
        if number == _DTYPE and wire == _VARINT:
            dtype = _signed(a, 32)
        elif number == _SHAPE and wire == _LEN:  # packed
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos, b)
                shape.append(_signed(value, 64))
        elif number == _SHAPE and wire == _VARINT:
            shape.append(_signed(a, 64))
        elif number == _DATA and wire == _LEN:
            data = view[a:b]
        elif number == _SHARED_MEMORY and wire == _LEN and shared_memory is None:
            shared_memory = pb.SharedMemoryRange.FromString(buf[a:b])
        elif number in (_DTYPE, _SHAPE, _DATA, _SHARED_MEMORY):
            # a known field with the wrong wire type, or a message given twice (protobuf merges)
            raise _Unexpected()
    return WireTensor(dtype, tuple(shape), data, shared_memory)


def _walk(buf: bytes) -> ScoreReply:
    reply = ScoreReply()
    view = memoryview(buf)
    seen = set()
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number in (_REQUEST_ID, _TIMING, _ERROR) or number in _TENSORS:
            if wire != _LEN:
                raise _Unexpected()
            if number != _REQUEST_ID and number in seen:
                raise _Unexpected()  # protobuf merges repeated message fields
            seen.add(number)
        if number == _REQUEST_ID:
            try:
                reply.request_id = buf[a:b].decode("utf-8")
            except UnicodeDecodeError:
                raise _Unexpected() from None
        elif number in _TENSORS:
            reply.tensors[_TENSORS[number]] = _tensor(buf, view, a, b)
        elif number == _TIMING:
            reply.timing = pb.Timing.FromString(buf[a:b])
        elif number == _ERROR:
            reply.error = pb.Error.FromString(buf[a:b])
    return reply


def from_message(message: pb.ScoreResponse) -> ScoreReply:
    """The ScoreReply of a parsed message (its tensors' data copied once, by protobuf)."""
    reply = ScoreReply(request_id=message.request_id, timing=message.timing)
    if message.HasField("error"):
        reply.error = message.error
    for name in _TENSORS.values():
        if message.HasField(name):
            tensor = getattr(message, name)
            reply.tensors[name] = WireTensor(
                tensor.dtype, tuple(tensor.shape), memoryview(tensor.data),
                tensor.shared_memory if tensor.HasField("shared_memory") else None)
    return reply


def parse_score_response(buf: bytes) -> ScoreReply:
    """grpcio's response_deserializer for Score and ScoreStream."""
    try:
        return _walk(buf)
    except _Unexpected:
        return from_message(pb.ScoreResponse.FromString(buf))

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
from typing import Any, Dict, Optional, Tuple

import numpy as np

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


def _add_shape(shape: list, buf: bytes, wire: int, a: int, b: int) -> None:
    """Appends a `repeated int64 shape` field's values: packed (a run of varints in buf[a:b]) or
    one unpacked varint `a`."""
    if wire == _VARINT:
        shape.append(_signed(a, 64))
        return
    pos = a
    while pos < b:
        value, pos = _varint(buf, pos, b)
        shape.append(_signed(value, 64))


def _utf8(buf: bytes, a: int, b: int) -> str:
    try:
        return buf[a:b].decode("utf-8")
    except UnicodeDecodeError:
        raise _Unexpected() from None


def _tensor(buf: bytes, view: memoryview, start: int, end: int) -> WireTensor:
    dtype, shape, data, shared_memory = 0, [], view[0:0], None
    for number, wire, a, b in _fields(buf, start, end):
        if number == _DTYPE and wire == _VARINT:
            dtype = _signed(a, 32)
        elif number == _SHAPE and wire in (_LEN, _VARINT):
            _add_shape(shape, buf, wire, a, b)
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
            reply.request_id = _utf8(buf, a, b)
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


# ScoreChunk field numbers (ScoreChunked's messages).
_CHUNK_OUTPUT, _CHUNK_DTYPE, _CHUNK_SHAPE, _CHUNK_OFFSET, _CHUNK_DATA = 1, 2, 3, 4, 5
_CHUNK_SHARED_MEMORY, _CHUNK_REQUEST_ID, _CHUNK_TIMING = 6, 7, 8
_CHUNK_OUTPUTS = {1: "logits", 2: "probs", 3: "context"}


@dataclass
class ChunkPart:
    """What parse_score_chunk reads of a ScoreChunk: its data a view of the message bytes."""

    output: int = 0
    dtype: int = 0
    shape: Tuple[int, ...] = ()
    offset: int = 0
    data: memoryview = memoryview(b"")
    shared_memory: Optional[pb.SharedMemoryRange] = None
    request_id: str = ""
    timing: Optional[pb.Timing] = None


def _walk_chunk(buf: bytes) -> ChunkPart:
    part = ChunkPart()
    view = memoryview(buf)
    shape: list = []
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number in (_CHUNK_OUTPUT, _CHUNK_DTYPE, _CHUNK_OFFSET) and wire == _VARINT:
            if number == _CHUNK_OUTPUT:
                part.output = _signed(a, 32)
            elif number == _CHUNK_DTYPE:
                part.dtype = _signed(a, 32)
            else:
                part.offset = a
        elif number == _CHUNK_SHAPE and wire in (_LEN, _VARINT):
            _add_shape(shape, buf, wire, a, b)
        elif number == _CHUNK_DATA and wire == _LEN:
            part.data = view[a:b]
        elif number == _CHUNK_REQUEST_ID and wire == _LEN:
            part.request_id = _utf8(buf, a, b)
        elif number == _CHUNK_SHARED_MEMORY and wire == _LEN and part.shared_memory is None:
            part.shared_memory = pb.SharedMemoryRange.FromString(buf[a:b])
        elif number == _CHUNK_TIMING and wire == _LEN and part.timing is None:
            part.timing = pb.Timing.FromString(buf[a:b])
        elif number in (_CHUNK_OUTPUT, _CHUNK_DTYPE, _CHUNK_SHAPE, _CHUNK_OFFSET, _CHUNK_DATA,
                        _CHUNK_SHARED_MEMORY, _CHUNK_REQUEST_ID, _CHUNK_TIMING):
            raise _Unexpected()  # a wrong wire type, or a message given twice (protobuf merges)
    part.shape = tuple(shape)
    return part


def parse_score_chunk(buf: bytes) -> ChunkPart:
    """grpcio's response_deserializer for ScoreChunked: like parse_score_response, the data a
    view of the received bytes, and anything unexpected parsed by protobuf instead."""
    try:
        return _walk_chunk(buf)
    except _Unexpected:
        message = pb.ScoreChunk.FromString(buf)
        return ChunkPart(
            output=message.output, dtype=message.dtype, shape=tuple(message.shape),
            offset=message.offset, data=memoryview(message.data),
            shared_memory=message.shared_memory if message.HasField("shared_memory") else None,
            request_id=message.request_id,
            timing=message.timing if message.HasField("timing") else None)


class MalformedChunks(Exception):
    """A ScoreChunked reply that does not add up (the client reports it as DATA_LOSS)."""


class ChunkAssembler:
    """A ScoreChunked reply's chunks into one ScoreReply whose tensors are read-only views of
    buffers filled as the chunks arrive (one copy each, and no whole-reply bytes object). The
    checks are the C++ client's (client/score_codec.h ChunkAssembler): outputs in order, each
    once, chunks at the offset where the previous one ended, within the output and with its
    first chunk's dtype and shape, outputs together within `max_bytes`; MalformedChunks
    otherwise."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._used = 0
        self._reply = ScoreReply()
        self._current: Optional[Tuple[ChunkPart, Any, int]] = None  # (first, buffer, filled)
        self._last_output = 0

    def add(self, part: ChunkPart) -> None:
        if part.request_id:
            self._reply.request_id = part.request_id
        if part.timing is not None:
            self._reply.timing = part.timing
        if part.output == 0:
            if len(part.data) or part.shared_memory is not None:
                raise MalformedChunks("data or shared_memory without an output")
            return
        if self._current is not None and self._current[0].output == part.output:
            self._continue(part)
        else:
            self._begin(part)

    def _begin(self, part: ChunkPart) -> None:
        if part.output not in _CHUNK_OUTPUTS or part.output <= self._last_output:
            raise MalformedChunks(f"output {part.output} after output {self._last_output} "
                                  f"(expected LOGITS, PROBS, CONTEXT, each once, in order)")
        self._store()
        itemsize = {pb.FLOAT32: 4, pb.FLOAT16: 2, pb.BFLOAT16: 2}.get(part.dtype)
        if itemsize is None:
            raise MalformedChunks(f"unknown dtype {part.dtype}")
        if min(part.shape, default=0) < 0:
            raise MalformedChunks(f"shape {list(part.shape)}")
        size = int(np.prod(part.shape, dtype=object)) * itemsize
        if size > self._max_bytes - self._used:
            raise MalformedChunks(f"shape {list(part.shape)} is over the "
                                  f"{self._max_bytes - self._used} bytes left of the reply")
        self._used += size
        self._last_output = part.output
        name = _CHUNK_OUTPUTS[part.output]
        if part.shared_memory is not None:
            if len(part.data) or part.offset:
                raise MalformedChunks(f"{name}: both data and shared_memory")
            self._reply.tensors[name] = WireTensor(part.dtype, part.shape, memoryview(b""),
                                                   part.shared_memory)
            return
        self._current = (part, np.empty(size, dtype=np.uint8), 0)
        self._continue(part)

    def _continue(self, part: ChunkPart) -> None:
        first, buffer, filled = self._current
        name = _CHUNK_OUTPUTS[first.output]
        if part.dtype != first.dtype or part.shape != first.shape:
            raise MalformedChunks(f"{name}: a chunk of dtype {part.dtype} and shape "
                                  f"{list(part.shape)} after its first of dtype {first.dtype} "
                                  f"and shape {list(first.shape)}")
        if part.shared_memory is not None:
            raise MalformedChunks(f"{name}: shared_memory on a chunk sent in band")
        if part.offset != filled or len(part.data) > len(buffer) - filled:
            raise MalformedChunks(f"{name}: {len(part.data)} bytes at offset {part.offset}, "
                                  f"expected at most {len(buffer) - filled} at offset {filled} "
                                  f"of {len(buffer)}")
        buffer[filled:filled + len(part.data)] = np.frombuffer(part.data, dtype=np.uint8)
        self._current = (first, buffer, filled + len(part.data))

    def _store(self) -> None:
        if self._current is None:
            return
        first, buffer, filled = self._current
        name = _CHUNK_OUTPUTS[first.output]
        if filled != len(buffer):
            raise MalformedChunks(f"{name}: {filled} of {len(buffer)} bytes before the next "
                                  f"output or the end")
        self._reply.tensors[name] = WireTensor(first.dtype, first.shape,
                                               memoryview(buffer).toreadonly())
        self._current = None

    def finish(self) -> ScoreReply:
        """The reply, once the call has ended OK."""
        self._store()
        if self._last_output == 0:
            raise MalformedChunks("the reply ended without any output")
        return self._reply

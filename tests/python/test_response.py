"""attnscore._response: the ScoreResponse walker against protobuf's own parser, byte for byte
(no server). Run by ctest in both environments with test_client."""
from __future__ import annotations

import struct
import unittest

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from attnscore import AttnscoreError, PlacedOutput
from attnscore._proto import attnscore_pb2 as pb
from attnscore._response import (ChunkAssembler, MalformedChunks, ScoreReply, from_message,
                                 parse_score_chunk, parse_score_response)
from attnscore._wire import decode_response


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def full_response() -> pb.ScoreResponse:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 4, 5), dtype=np.float32)
    probs = rng.standard_normal((2, 3, 4, 5)).astype(np.float16)
    context = rng.standard_normal((2, 3, 4, 7), dtype=np.float32)
    return pb.ScoreResponse(
        request_id="req-7 ✓",
        logits=pb.Tensor(dtype=pb.FLOAT32, shape=list(logits.shape), data=logits.tobytes()),
        probs=pb.Tensor(dtype=pb.FLOAT16, shape=list(probs.shape), data=probs.tobytes()),
        context=pb.Tensor(dtype=pb.BFLOAT16, shape=[2, 3, 4, 7],
                          data=context.view(np.uint32).astype(np.uint16).tobytes()),
        timing=pb.Timing(queue_us=12, compute_us=345, batch_size=6))


def summary(reply: ScoreReply) -> dict:
    """Everything decode_response reads, as plain values."""
    return {
        "request_id": reply.request_id,
        "tensors": {name: (t.dtype, tuple(t.shape), bytes(t.data),
                           None if t.shared_memory is None else
                           (t.shared_memory.region, t.shared_memory.offset,
                            t.shared_memory.byte_size))
                    for name, t in sorted(reply.tensors.items())},
        "timing": (reply.timing.queue_us, reply.timing.compute_us, reply.timing.batch_size),
        "error": None if reply.error is None else (reply.error.code, reply.error.message),
    }


def protobuf_summary(buf: bytes) -> dict:
    return summary(from_message(pb.ScoreResponse.FromString(buf)))


class ParseScoreResponseTest(unittest.TestCase):
    def assert_like_protobuf(self, buf: bytes) -> ScoreReply:
        reply = parse_score_response(buf)
        self.assertEqual(summary(reply), protobuf_summary(buf))
        return reply

    def test_every_field_as_protobuf_parses_it(self) -> None:
        self.assert_like_protobuf(full_response().SerializeToString())

    def test_tensor_data_is_a_view_of_the_response_bytes(self) -> None:
        buf = full_response().SerializeToString()
        reply = parse_score_response(buf)
        for tensor in reply.tensors.values():
            self.assertIs(tensor.data.obj, buf)
        logits = np.frombuffer(reply.tensors["logits"].data, dtype=np.float32)
        self.assertFalse(logits.flags.writeable)
        self.assertFalse(logits.flags.owndata)

    def test_error_and_empty_messages(self) -> None:
        for message in (pb.ScoreResponse(),
                        pb.ScoreResponse(request_id="3", error=pb.Error(code=3, message="bad")),
                        pb.ScoreResponse(logits=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 1, 0, 4])),
                        pb.ScoreResponse(logits=pb.Tensor())):
            with self.subTest(message=str(message)):
                reply = self.assert_like_protobuf(message.SerializeToString())
                self.assertEqual(message.HasField("error"), reply.error is not None)

    def test_unknown_fields_of_every_wire_type_are_skipped(self) -> None:
        buf = full_response().SerializeToString()
        unknown = (key(20, 0) + varint(300) + key(21, 1) + struct.pack("<d", 1.5) +
                   key(22, 5) + struct.pack("<f", 2.5) + length_delimited(23, b"xyz"))
        tensor = (key(1, 0) + varint(pb.FLOAT32) + key(9, 0) + varint(1) +
                  length_delimited(2, varint(2)) + length_delimited(3, b"\0" * 8))
        self.assert_like_protobuf(unknown + buf + unknown + length_delimited(3, tensor))

    def test_unpacked_shape_and_negative_values(self) -> None:
        tensor = (key(1, 0) + varint(-5) + key(2, 0) + varint(2) + key(2, 0) + varint(-1) +
                  length_delimited(2, varint(3) + varint(1 << 40)) + length_delimited(3, b"ab"))
        reply = self.assert_like_protobuf(length_delimited(2, tensor))
        self.assertEqual(reply.tensors["logits"].shape, (2, -1, 3, 1 << 40))
        self.assertEqual(reply.tensors["logits"].dtype, -5)

    def test_last_scalar_wins_and_repeated_messages_merge(self) -> None:
        first = pb.Tensor(dtype=pb.FLOAT32, shape=[2], data=b"\1" * 8).SerializeToString()
        second = pb.Tensor(dtype=pb.FLOAT16, shape=[2], data=b"\2" * 4).SerializeToString()
        buf = (length_delimited(1, b"a") + length_delimited(1, b"b") +
               length_delimited(2, first) + length_delimited(2, second))
        reply = self.assert_like_protobuf(buf)
        self.assertEqual(reply.request_id, "b")
        self.assertEqual(reply.tensors["logits"].shape, (2, 2))  # protobuf's merge

    def test_malformed_bytes_raise_protobufs_error(self) -> None:
        buf = full_response().SerializeToString()
        for bad in (buf[:-3], buf[:40], b"\x12\xff\xff\xff\xff\x0f", b"\x0a\x02\xff\xfe",
                    key(2, 3) + b"\0"):
            with self.subTest(bad=bad[:12]):
                with self.assertRaises(DecodeError):
                    parse_score_response(bad)


def placed_response(**tensor: object) -> pb.ScoreResponse:
    """logits placed in shared memory (data empty), probs in band."""
    logits = dict(dtype=pb.FLOAT16, shape=[1, 2, 3, 5],
                  shared_memory=pb.SharedMemoryRange(region="r", offset=4096, byte_size=60))
    logits.update(tensor)
    return pb.ScoreResponse(request_id="1", logits=pb.Tensor(**logits),
                            probs=pb.Tensor(dtype=pb.FLOAT32, shape=[1], data=b"\0" * 4))


class PlacedOutputTest(unittest.TestCase):
    def test_placed_tensor_parses_like_protobuf(self) -> None:
        buf = placed_response().SerializeToString()
        reply = parse_score_response(buf)
        self.assertEqual(summary(reply), protobuf_summary(buf))
        self.assertEqual(reply.tensors["logits"].shared_memory.region, "r")
        self.assertIsNone(reply.tensors["probs"].shared_memory)
        # shared_memory given twice: protobuf merges the two, so it parses the message.
        tensor = placed_response().logits.SerializeToString()
        twice = tensor + length_delimited(4, pb.SharedMemoryRange(offset=8).SerializeToString())
        reply = parse_score_response(length_delimited(2, twice))
        self.assertEqual((reply.tensors["logits"].shared_memory.region,
                          reply.tensors["logits"].shared_memory.offset), ("r", 8))

    def test_decoded_as_placed_not_as_an_empty_array(self) -> None:
        result = decode_response(parse_score_response(placed_response().SerializeToString()),
                                 as_torch=False)
        self.assertIsNone(result.logits)
        self.assertEqual(result.probs.shape, (1,))
        self.assertEqual(result.placed, {"logits": PlacedOutput(
            dtype="float16", shape=(1, 2, 3, 5), region="r", offset=4096, byte_size=60)})

    def test_malformed_placed_outputs_are_internal_errors(self) -> None:
        for bad in (placed_response(data=b"\0" * 60),  # data and shared_memory both set
                    placed_response(dtype=7),
                    placed_response(shape=[1, 2, 3, 6]),
                    placed_response(shared_memory=pb.SharedMemoryRange(byte_size=60))):
            with self.subTest(bad=str(bad.logits)):
                reply = parse_score_response(bad.SerializeToString())
                with self.assertRaises(AttnscoreError) as raised:
                    decode_response(reply, as_torch=False)
                self.assertEqual(raised.exception.code, grpc.StatusCode.INTERNAL)
                self.assertIn("logits", raised.exception.message)


if __name__ == "__main__":
    unittest.main()


def chunk(output: int, offset: int, data: bytes, shape=(1, 1, 3, 4), **extra) -> bytes:
    return pb.ScoreChunk(output=output, dtype=pb.FLOAT32, shape=list(shape), offset=offset,
                         data=data, **extra).SerializeToString()


class ChunkAssemblerTest(unittest.TestCase):
    """ScoreChunked's messages into one reply: the C++ client's checks (client/score_codec.h)."""

    LOGITS = np.arange(12, dtype=np.float32).tobytes()

    def assemble(self, messages, max_bytes: int = 1 << 20) -> ScoreReply:
        assembler = ChunkAssembler(max_bytes)
        for message in messages:
            assembler.add(parse_score_chunk(message))
        return assembler.finish()

    def test_outputs_assemble_in_order(self) -> None:
        probs_range = pb.SharedMemoryRange(region="out", offset=64, byte_size=48)
        reply = self.assemble([
            chunk(pb.LOGITS, 0, self.LOGITS[:16]),
            chunk(pb.LOGITS, 16, self.LOGITS[16:]),
            pb.ScoreChunk(output=pb.PROBS, dtype=pb.FLOAT32, shape=[1, 1, 3, 4],
                          shared_memory=probs_range).SerializeToString(),
            chunk(pb.CONTEXT, 0, b"", shape=(1, 1, 0, 8), request_id="r-9",
                  timing=pb.Timing(compute_us=5))])
        self.assertEqual(reply.request_id, "r-9")
        self.assertEqual(reply.timing.compute_us, 5)
        self.assertEqual(bytes(reply.tensors["logits"].data), self.LOGITS)
        self.assertTrue(reply.tensors["logits"].data.readonly)
        self.assertEqual(reply.tensors["probs"].shared_memory.region, "out")
        self.assertEqual(reply.tensors["context"].shape, (1, 1, 0, 8))
        result = decode_response(reply, as_torch=False)
        self.assertEqual(result.logits.reshape(-1).tolist(), list(range(12)))
        self.assertFalse(result.logits.flags.writeable)
        self.assertEqual(result.placed["probs"].offset, 64)

    def test_data_is_a_view_of_the_message(self) -> None:
        message = chunk(pb.LOGITS, 0, self.LOGITS)
        part = parse_score_chunk(message)
        self.assertIs(part.data.obj, message)
        # An encoding the walker leaves to protobuf (shared_memory twice merges) parses alike.
        twice = message + length_delimited(6, b"\x0a\x01a") + length_delimited(6, b"\x10\x05")
        merged = parse_score_chunk(twice)
        self.assertEqual((merged.shared_memory.region, merged.shared_memory.offset), ("a", 5))

    def test_malformed_replies(self) -> None:
        first = chunk(pb.LOGITS, 0, self.LOGITS[:16])
        cases = {
            "gap": [first, chunk(pb.LOGITS, 20, self.LOGITS[16:])],
            "past the end": [first, chunk(pb.LOGITS, 16, self.LOGITS[16:] + b"1234")],
            "reshaped": [first, chunk(pb.LOGITS, 16, self.LOGITS[16:], shape=(1, 1, 4, 3))],
            "incomplete": [first],
            "next output too soon": [first, chunk(pb.PROBS, 0, self.LOGITS)],
            "out of order": [chunk(pb.PROBS, 0, self.LOGITS), chunk(pb.LOGITS, 0, self.LOGITS)],
            "unknown dtype": [pb.ScoreChunk(output=pb.LOGITS, dtype=9, shape=[1])
                              .SerializeToString()],
            "over the reply": [chunk(pb.LOGITS, 0, b"", shape=(1 << 20, 1 << 20))],
            "no output": [pb.ScoreChunk(request_id="r").SerializeToString()],
        }
        for name, messages in cases.items():
            with self.subTest(name):
                with self.assertRaises(MalformedChunks):
                    self.assemble(messages)

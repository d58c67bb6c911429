"""Requests and results: Python arguments to attnscore.v1 messages and back (no I/O here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from attnscore import _tensors
from attnscore._errors import AttnscoreError, from_code_number
from attnscore._proto import attnscore_pb2 as pb
from attnscore._response import ScoreReply

SERVICE_NAME = "attnscore.v1.AttentionScorer"
LAYOUTS = {"BHSD": pb.BHSD, "BSHD": pb.BSHD, "SBHD": pb.SBHD}
OUTPUTS = {"logits": pb.LOGITS, "probs": pb.PROBS, "context": pb.CONTEXT}


@dataclass(frozen=True)
class Placement:
    """Where an output goes instead of the reply: bytes [offset, offset + byte_size) of the
    registered shared-memory region `region` (its registered name; offset from the start of the
    registered range). byte_size must hold the whole output."""

    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class PlacedOutput:
    """An output the server wrote into shared memory: dtype ("float32", "float16",
    "bfloat16"), shape, and the range of the region that holds its bytes (byte_size: the bytes
    written). SharedMemoryRegion.view reads it."""

    dtype: str
    shape: Tuple[int, ...]
    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class SharedTensor:
    """A query, key or value that the server reads in place from a registered shared-memory
    region instead of receiving its bytes: `region` (its registered name), `offset` (from the
    start of the registered range), dtype ("float32", "float16", "bfloat16") and shape. Its bytes
    are product(shape) * element size, row-major, little-endian; leave them unchanged until the
    reply arrives. SharedMemoryRegion.put writes an array and returns one, and
    SharedMemoryRegion.view gives a writable array over one (to fill it in place)."""

    region: str
    offset: int
    dtype: str
    shape: Tuple[int, ...]

    @property
    def byte_size(self) -> int:
        itemsize = 4 if _tensors.dtype_number(self.dtype) == pb.FLOAT32 else 2
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize


@dataclass(frozen=True)
class SharedMemoryRegistration:
    """A registered shared-memory region (shared_memory_status()): the name placements use,
    the POSIX shared-memory object's key, and the registered range of it."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class Request:
    """One scoring request: the arguments of Client.score, for Client.score_many."""

    query: Any
    key: Any
    value: Any = None
    alibi: Optional[Sequence[float]] = None
    model: Optional[str] = None
    causal: bool = False
    scale: Optional[float] = None
    key_lengths: Optional[Sequence[int]] = None
    outputs: Union[str, Sequence[str]] = ("logits",)
    layout: str = "BHSD"
    output_dtype: Any = None
    as_torch: bool = False
    # output name -> Placement or (region, offset, byte_size): outputs written into shared memory
    placements: Optional[Mapping[str, Any]] = None


@dataclass(frozen=True)
class Timing:
    """Where the time of one request went, in microseconds (the server's measurement)."""

    queue_us: int
    compute_us: int
    batch_size: int  # batch items (sum of the requests' B) in the batch this request ran in


@dataclass(frozen=True)
class ScoreResult:
    """The outputs asked for (read-only numpy arrays, or torch tensors with as_torch=True);
    None for outputs not asked for or placed in shared memory. logits and probs are [B, H, Lq,
    Lk]; context is [B, H, Lq, Dv] in the request's layout. placed: output name -> PlacedOutput
    for the outputs the request placed in shared memory."""

    logits: Any
    probs: Any
    context: Any
    timing: Timing
    request_id: str = ""
    placed: Mapping[str, PlacedOutput] = field(default_factory=dict)


def _outputs(outputs: Union[str, Iterable[str]]) -> list:
    names = [outputs] if isinstance(outputs, str) else list(outputs)
    if not names:
        raise ValueError("outputs: ask for at least one of 'logits', 'probs', 'context'")
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        raise ValueError(f"outputs: unknown {unknown}; expected 'logits', 'probs', 'context'")
    return [OUTPUTS[name] for name in dict.fromkeys(names)]


def _layout(layout: str) -> int:
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise ValueError(f"layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout.upper()]


def _set_bias(message: pb.ScoreRequest, request: Request) -> None:
    """alibi=None and no model: the paper's slopes; alibi=slopes: those; model=name: relative."""
    if request.model is not None and request.alibi is not None:
        raise ValueError("give either alibi= (ALiBi slopes) or model= (a relative-position "
                         "parameter set), not both")
    if request.model is not None:
        if not isinstance(request.model, str) or not request.model:
            raise ValueError(f"model: expected a parameter set's name, got {request.model!r}")
        message.relative.model = request.model
        return
    message.alibi.SetInParent()
    if request.alibi is not None:
        slopes = np.asarray(_plain(request.alibi), dtype=np.float32).reshape(-1)
        message.alibi.slopes.extend(slopes.tolist())


def _plain(value: Any) -> Any:
    """torch tensors as numpy (for slopes and key lengths)."""
    if _tensors._is_torch_tensor(value):
        return value.detach().to("cpu").numpy()
    return value


def _key_lengths(value: Any) -> list:
    lengths = np.asarray(_plain(value)).reshape(-1)
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"key_lengths: expected integers, got dtype {lengths.dtype}")
    return [int(length) for length in lengths]


def _placements(placements: Mapping[str, Any]) -> list:
    if not isinstance(placements, Mapping):
        raise TypeError(f"placements: expected a mapping of output name to Placement or "
                        f"(region, offset, byte_size), got {type(placements)!r}")
    out = []
    for name, where in placements.items():
        if name not in OUTPUTS:
            raise ValueError(f"placements: unknown output {name!r}; expected 'logits', "
                             f"'probs', 'context'")
        if not isinstance(where, Placement):
            try:
                region, offset, byte_size = where
            except (TypeError, ValueError):
                raise TypeError(f"placements[{name!r}]: expected a Placement or (region, "
                                f"offset, byte_size), got {where!r}") from None
            where = Placement(region, offset, byte_size)
        if not isinstance(where.region, str) or not where.region:
            raise ValueError(f"placements[{name!r}]: region must be a registered region's "
                             f"name, got {where.region!r}")
        offset, byte_size = int(where.offset), int(where.byte_size)
        if offset < 0 or byte_size <= 0:
            raise ValueError(f"placements[{name!r}]: expected offset >= 0 and byte_size > 0, "
                             f"got {offset} and {byte_size}")
        out.append(pb.OutputPlacement(output=OUTPUTS[name], range=pb.SharedMemoryRange(
            region=where.region, offset=offset, byte_size=byte_size)))
    return out


def _shared_input(shared: SharedTensor, what: str) -> pb.Tensor:
    if not isinstance(shared.region, str) or not shared.region:
        raise ValueError(f"{what}: region must be a registered region's name, got "
                         f"{shared.region!r}")
    offset = int(shared.offset)
    if offset < 0:
        raise ValueError(f"{what}: expected offset >= 0, got {offset}")
    shape = [int(extent) for extent in shared.shape]
    if any(extent < 0 for extent in shape):
        raise ValueError(f"{what}: expected a shape of extents >= 0, got {shape}")
    number = _tensors.dtype_number(shared.dtype)
    return pb.Tensor(dtype=number, shape=shape, shared_memory=pb.SharedMemoryRange(
        region=shared.region, offset=offset, byte_size=shared.byte_size))


# An input sent in the message: its ScoreRequest field name, wire DType and the array whose
# bytes are the tensor's data (C-contiguous, little-endian).
_ArrayInput = Tuple[str, int, np.ndarray]
_INPUTS = ("query", "key", "value")
_FIELD_NUMBERS = {name: pb.ScoreRequest.DESCRIPTOR.fields_by_name[name].number
                  for name in _INPUTS}


def _request_fields(request: Request, request_id: str) -> Tuple[pb.ScoreRequest,
                                                                  List[_ArrayInput]]:
    """The ScoreRequest without the inputs sent as bytes, and those inputs; ValueError/TypeError
    for arguments the client can judge, ImportError when the outputs could not be decoded
    (bfloat16 without ml_dtypes or torch)."""
    message = pb.ScoreRequest(request_id=request_id, layout=_layout(request.layout),
                              causal=bool(request.causal), outputs=_outputs(request.outputs))
    _set_bias(message, request)
    arrays: List[_ArrayInput] = []
    for name in _INPUTS:
        value = getattr(request, name)
        if value is None and name == "value":
            continue
        if isinstance(value, SharedTensor):
            getattr(message, name).CopyFrom(_shared_input(value, name))
        else:
            arrays.append((name,) + _tensors.wire_input(value, name))
    _set_options(message, request)
    query_dtype = arrays[0][1] if arrays and arrays[0][0] == "query" else message.query.dtype
    _tensors.check_decodable(message.output_dtype or query_dtype, request.as_torch)
    return message, arrays


def build_request(request: Request, request_id: str = "") -> pb.ScoreRequest:
    """The ScoreRequest message (what encode_request sends); errors as encode_request's."""
    message, arrays = _request_fields(request, request_id)
    for name, dtype, array in arrays:
        tensor = getattr(message, name)
        tensor.dtype = dtype
        tensor.shape.extend(array.shape)
        tensor.data = array.tobytes()
    return message


def _varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tensor_field(number: int, dtype: int, array: np.ndarray) -> List[Any]:
    """Field `number` of a ScoreRequest holding Tensor {dtype, shape, data}, as the bytes before
    the data and the data itself (a view of the array). Tensor's fields: 1 dtype (varint, tag
    0x08), 2 shape (packed varints, 0x12), 3 data (bytes, 0x1a); EncodeRequestTest checks them
    against protobuf's own encoding."""
    shape = b"".join(_varint(extent) for extent in array.shape)
    data = array.reshape(-1).view(np.uint8)  # a view: the array is C-contiguous
    head = (b"\x08" + _varint(dtype) + b"\x12" + _varint(len(shape)) + shape + b"\x1a" +
            _varint(data.nbytes))
    return [_varint(number << 3 | 2) + _varint(len(head) + data.nbytes) + head, data]


def encode_request(request: Request, request_id: str = "") -> bytes:
    """The ScoreRequest's wire bytes, what Score and ScoreStream send: the message without its
    byte inputs through protobuf, then each of those inputs' Tensor field written here around its
    array's bytes, all joined in one copy (through a protobuf message the bytes were copied three
    times: into a bytes object, into the message, out of it; 0.87 -> 0.16 ms for a decode step's
    4 MiB of keys). Protobuf parsers merge fields in any order, so this parses as build_request's
    message. ValueError/TypeError for arguments the client can judge, and ImportError when the
    outputs could not be decoded (bfloat16 without ml_dtypes or torch)."""
    return encode_request_sized(request, request_id)[0]


def encode_request_sized(request: Request, request_id: str = "") -> Tuple[bytes, int]:
    """encode_request's bytes, and the bytes of the outputs the reply will carry (those not
    placed in shared memory; 0 where the shapes do not say, and the server will refuse it)."""
    message, arrays = _request_fields(request, request_id)
    parts: List[Any] = [message.SerializeToString()]
    shapes = {name: getattr(message, name).shape for name in _INPUTS}
    query_dtype = message.query.dtype
    for name, dtype, array in arrays:
        parts += _tensor_field(_FIELD_NUMBERS[name], dtype, array)
        shapes[name] = array.shape
        if name == "query":
            query_dtype = dtype
    return b"".join(parts), _reply_bytes(message, shapes, message.output_dtype or query_dtype)


def _reply_bytes(message: pb.ScoreRequest, shapes: Mapping[str, Any], dtype: int) -> int:
    """The bytes of the request's in-band outputs, from its inputs' shapes and layout."""
    query, key, value = (tuple(shapes.get(name, ())) for name in _INPUTS)
    if len(query) != 4 or len(key) != 4:
        return 0
    # [B, H, S, D] positions of each layout's axes.
    axes = {pb.BSHD: (0, 2, 1, 3), pb.SBHD: (1, 2, 0, 3)}.get(message.layout, (0, 1, 2, 3))
    batch, heads, query_len = query[axes[0]], query[axes[1]], query[axes[2]]
    key_len = key[axes[2]]
    placed = {placement.output for placement in message.placements}
    wanted = [output for output in message.outputs if output not in placed]
    per_row = sum(key_len for output in wanted if output in (pb.LOGITS, pb.PROBS))
    if pb.CONTEXT in wanted and len(value) == 4:
        per_row += value[axes[3]]
    itemsize = 4 if dtype == pb.FLOAT32 else 2
    return max(0, batch * heads * query_len * per_row * itemsize)


def _set_options(message: pb.ScoreRequest, request: Request) -> None:
    """The request's fields after its inputs: scale, key lengths, output dtype, placements."""
    if request.scale is not None:
        message.scale = float(request.scale)
    if request.key_lengths is not None:
        message.key_lengths.extend(_key_lengths(request.key_lengths))
    if request.output_dtype is not None:
        message.output_dtype = _tensors.dtype_number(request.output_dtype)
    if request.placements:
        message.placements.extend(_placements(request.placements))


def as_request(item: Union[Request, Mapping[str, Any]]) -> Request:
    """score_many's items: Request objects or mappings of Client.score's keyword arguments."""
    if isinstance(item, Request):
        return item
    if isinstance(item, Mapping):
        return Request(**item)
    raise TypeError(f"score_many: expected attnscore.Request or a mapping, got {type(item)!r}")


def decode_response(response: ScoreReply, as_torch: bool) -> ScoreResult:
    """The ScoreResult of a response; AttnscoreError for a stream response carrying an error."""
    if response.error is not None:
        raise from_code_number(response.error.code, response.error.message)

    placed = {name: _placed(name, tensor) for name, tensor in response.tensors.items()
              if tensor.shared_memory is not None}

    def output(name: str) -> Any:
        tensor = response.tensors.get(name)
        if tensor is None or name in placed:
            return None
        return _tensors.from_wire(tensor, as_torch)

    timing = Timing(queue_us=response.timing.queue_us, compute_us=response.timing.compute_us,
                    batch_size=response.timing.batch_size)
    return ScoreResult(logits=output("logits"), probs=output("probs"),
                       context=output("context"), timing=timing,
                       request_id=response.request_id, placed=placed)


def _placed(name: str, tensor: Any) -> PlacedOutput:
    """The PlacedOutput of a response tensor with shared_memory set; AttnscoreError (INTERNAL)
    when the response is malformed (data as well, an unknown dtype, a size that does not fit)."""
    where = tensor.shared_memory
    if len(tensor.data):
        raise AttnscoreError(grpc.StatusCode.INTERNAL,
                             f"response {name} has both data ({len(tensor.data)} bytes) and "
                             f"shared_memory")
    if tensor.dtype not in _tensors.DTYPE_NAMES:
        raise AttnscoreError(grpc.StatusCode.INTERNAL,
                             f"response {name} with unknown dtype {tensor.dtype}")
    itemsize = 4 if tensor.dtype == pb.FLOAT32 else 2
    expected = int(np.prod(tensor.shape, dtype=np.int64)) * itemsize
    if min(tensor.shape, default=0) < 0 or where.byte_size != expected or not where.region:
        raise AttnscoreError(grpc.StatusCode.INTERNAL,
                             f"response {name} of shape {list(tensor.shape)} placed in "
                             f"{where.byte_size} bytes of region {where.region!r}")
    return PlacedOutput(dtype=_tensors.DTYPE_NAMES[tensor.dtype], shape=tuple(tensor.shape),
                        region=where.region, offset=where.offset, byte_size=where.byte_size)


class StreamCollector:
    """Matches ScoreStream responses to the requests by request_id (the index as text)."""

    def __init__(self, requests: Sequence[Request]) -> None:
        self.messages = [encode_request(r, request_id=str(i)) for i, r in enumerate(requests)]
        self._as_torch = [r.as_torch for r in requests]
        self._results: dict = {}

    def add(self, response: ScoreReply) -> None:
        try:
            index = int(response.request_id)
            as_torch = self._as_torch[index]
        except (ValueError, IndexError):
            raise AttnscoreError(grpc.StatusCode.INTERNAL,
                                 f"response for unknown request_id {response.request_id!r}")
        try:
            self._results[index] = decode_response(response, as_torch)
        except AttnscoreError as error:
            self._results[index] = error

    def results(self, return_exceptions: bool) -> list:
        missing = len(self.messages) - len(self._results)
        if missing:
            raise AttnscoreError(grpc.StatusCode.INTERNAL,
                                 f"ScoreStream ended without responses for {missing} of "
                                 f"{len(self.messages)} requests")
        ordered = [self._results[i] for i in range(len(self.messages))]
        if not return_exceptions:
            for item in ordered:
                if isinstance(item, AttnscoreError):
                    raise item
        return ordered


@dataclass(frozen=True)
class ModelInfo:
    """A relative-position parameter set the server has loaded (use its name as model=)."""

    name: str
    source: str
    heads: int
    head_dim: int
    max_relative_positions: int


@dataclass(frozen=True)
class Limits:
    max_heads: int
    max_head_dim: int
    max_seq_len: int
    max_output_bytes: int
    max_message_bytes: int
    shm_prefix: str = ""  # RegisterSharedMemory's object-name prefix; "": shared memory is off
    max_shm_regions: int = 0


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int
    max_queue_delay_us: int
    max_queue: int
    batch_workers: int


@dataclass(frozen=True)
class ServerInfo:
    version: str
    device: str
    intra_op_threads: int
    limits: Limits
    batching: BatchingOptions


def _fields(message: Any, cls: type) -> Any:
    return cls(**{name: getattr(message, name) for name in cls.__dataclass_fields__})


def decode_models(response: pb.ListModelsResponse) -> list:
    return [_fields(model, ModelInfo) for model in response.models]


def decode_shared_memory_status(response: pb.SharedMemoryStatusResponse) -> list:
    return [_fields(region, SharedMemoryRegistration) for region in response.regions]


def register_request(name: str, key: Any, byte_size: int,
                     offset: int = 0) -> pb.RegisterSharedMemoryRequest:
    """key: the object's name (shm_open's, without the leading '/'), or a SharedMemoryRegion."""
    key = getattr(key, "key", key)
    if not isinstance(name, str) or not isinstance(key, str):
        raise TypeError(f"register_shared_memory: name and key must be strings, got {name!r} "
                        f"and {key!r}")
    if int(byte_size) <= 0 or int(offset) < 0:
        raise ValueError(f"register_shared_memory: expected byte_size > 0 and offset >= 0, got "
                         f"{byte_size} and {offset}")
    return pb.RegisterSharedMemoryRequest(name=name, key=key, offset=int(offset),
                                          byte_size=int(byte_size))


def decode_info(info: pb.ServerInfo) -> ServerInfo:
    return ServerInfo(version=info.version, device=info.device,
                      intra_op_threads=info.intra_op_threads,
                      limits=_fields(info.limits, Limits),
                      batching=_fields(info.batching, BatchingOptions))

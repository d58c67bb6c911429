"""attnscore.Client: the blocking client (one gRPC channel; thread-safe, as the channel is)."""
from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

import grpc

from attnscore import _channel
from attnscore._channel import Pem
from attnscore._errors import from_rpc_error
from attnscore._proto import attnscore_pb2 as pb
from attnscore._proto import attnscore_pb2_grpc as pb_grpc
from attnscore._wire import (SERVICE_NAME, ModelInfo, Request, ScoreResult, ServerInfo,
                             SharedMemoryRegistration, StreamCollector, as_request,
                             decode_info, decode_models, decode_response, encode_request_sized,
                             decode_shared_memory_status, register_request)
from attnscore._response import ChunkAssembler, MalformedChunks, ScoreReply


class Client:
    """A connection to one attnscore server, or several (round robin).

    target: "host:port", "dns:///name:port" (every address, re-resolved), "ipv4:a:p,b:q",
    "unix:/path", or "host:p,host2:q". tls: TLS with the system roots or `ca`; `cert` and `key`
    for mutual TLS (PEM bytes, PEM text or file paths); `server_name` when the target's name is
    not the certificate's. token: sent as "authorization: Bearer <token>" (over plaintext TCP
    only with allow_insecure_token=True; over TLS or a "unix:/path" target always). timeout:
    seconds per call (for score_many: the whole stream); None: no deadline. Calls failing with
    UNAVAILABLE are retried (5 attempts). chunked_reply_bytes: score() asks for replies of this
    many bytes and more in chunks (ScoreChunked), copied into the result as they arrive, so the
    reply is never held twice (0: never; a server without the method is asked with Score).
    Errors: AttnscoreError (code, message); ValueError/TypeError for bad arguments.
    """

    def __init__(self, target: str, *, tls: bool = False, ca: Optional[Pem] = None,
                 cert: Optional[Pem] = None, key: Optional[Pem] = None,
                 server_name: Optional[str] = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, allow_insecure_token: bool = False,
                 chunked_reply_bytes: int = _channel.CHUNKED_REPLY_BYTES) -> None:
        self._chunked_reply_bytes = _channel.check_chunked_reply_bytes(chunked_reply_bytes)
        self._config = _channel.channel_config(
            target, tls=tls, ca=ca, cert=cert, key=key, server_name=server_name, token=token,
            timeout=timeout, allow_insecure_token=allow_insecure_token)
        self._channel = _channel.open_channel(self._config, grpc)
        self._stub = pb_grpc.AttentionScorerStub(self._channel)
        self._score, self._score_stream = _channel.score_callables(self._channel)
        self._score_chunked = _channel.score_chunked_callable(self._channel)
        self._chunked_unimplemented = False
        self._health_check = self._channel.unary_unary(
            _channel.HEALTH_CHECK_METHOD,
            request_serializer=_channel.encode_health_request,
            response_deserializer=_channel.decode_health_response)

    def score(self, query: Any, key: Any, value: Any = None, *,
              alibi: Optional[Sequence[float]] = None, model: Optional[str] = None,
              causal: bool = False, scale: Optional[float] = None,
              key_lengths: Optional[Sequence[int]] = None,
              outputs: Union[str, Sequence[str]] = ("logits",), layout: str = "BHSD",
              output_dtype: Any = None, as_torch: bool = False,
              placements: Optional[Mapping[str, Any]] = None) -> ScoreResult:
        """Scores one request. alibi=None without model: ALiBi with the paper's slopes;
        alibi=[m_1..m_H]: those slopes; model="name": the server's relative-position parameter
        set (see models()). outputs: any of "logits", "probs", "context" (context needs value).
        placements: output name -> Placement or (region, offset, byte_size): those outputs are
        written into a registered shared-memory region and come back in result.placed (their
        attribute is None). query, key and value may each be a SharedTensor (see
        SharedMemoryRegion.put): the server reads that input in place from a registered region
        instead of receiving its bytes."""
        request = Request(query, key, value, alibi=alibi, model=model, causal=causal,
                          scale=scale, key_lengths=key_lengths, outputs=outputs, layout=layout,
                          output_dtype=output_dtype, as_torch=as_torch,
                          placements=placements)
        message, reply_bytes = encode_request_sized(request)
        if (self._chunked_reply_bytes and reply_bytes >= self._chunked_reply_bytes
                and not self._chunked_unimplemented):
            reply = self._score_in_chunks(message, reply_bytes)
            if reply is not None:
                return decode_response(reply, as_torch)
        try:
            response = self._score(message, **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return decode_response(response, as_torch)

    def _score_in_chunks(self, message: bytes, reply_bytes: int) -> Optional[ScoreReply]:
        """The reply through ScoreChunked; None when the server does not have the method (then
        score() asks with Score, as it will from now on)."""
        assembler = ChunkAssembler(reply_bytes)
        call = self._score_chunked(message, **_channel.call_kwargs(self._config))
        received = False
        try:
            for part in call:
                received = True
                assembler.add(part)
            return assembler.finish()
        except (grpc.RpcError, MalformedChunks) as error:
            failure = _channel.chunked_failure(error, received, call)
            if failure is None:
                self._chunked_unimplemented = True
                return None
            raise failure from None

    def score_many(self, requests: Iterable[Union[Request, Mapping[str, Any]]], *,
                   return_exceptions: bool = False) -> List[Any]:
        """Scores many requests over one ScoreStream (all written without waiting for answers).
        Returns the results in the order of `requests`. A request the server refuses raises its
        AttnscoreError after the stream ends, or with return_exceptions=True takes that place in
        the list."""
        collector = StreamCollector([as_request(item) for item in requests])
        if not collector.messages:
            return []
        try:
            for response in self._score_stream(iter(collector.messages),
                                               **_channel.call_kwargs(self._config)):
                collector.add(response)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return collector.results(return_exceptions)

    def health(self, service: str = SERVICE_NAME) -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN".
        The default service is readiness; "" is liveness."""
        try:
            return self._health_check(service, **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_rpc_error(error) from None

    def models(self) -> List[ModelInfo]:
        """The relative-position parameter sets the server has loaded, sorted by name."""
        try:
            response = self._stub.ListModels(pb.ListModelsRequest(),
                                             **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return decode_models(response)

    def info(self) -> ServerInfo:
        """The server's version, device, limits and batching options."""
        try:
            response = self._stub.GetServerInfo(pb.GetServerInfoRequest(),
                                                **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return decode_info(response)

    def register_shared_memory(self, name: str, key: Any, byte_size: int,
                               offset: int = 0) -> None:
        """Registers bytes [offset, offset + byte_size) of the POSIX shared-memory object
        `key` (shm_open's name without the leading '/', starting with the server's --shm-prefix;
        or a SharedMemoryRegion) as region `name`, for placements. Errors: FAILED_PRECONDITION
        (shared memory is off), ALREADY_EXISTS, NOT_FOUND (no such object), INVALID_ARGUMENT,
        PERMISSION_DENIED, RESOURCE_EXHAUSTED."""
        request = register_request(name, key, byte_size, offset)
        try:
            self._stub.RegisterSharedMemory(request, **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def unregister_shared_memory(self, name: str) -> None:
        """Forgets region `name` (NOT_FOUND if this caller has none of that name)."""
        request = pb.UnregisterSharedMemoryRequest(name=name)
        try:
            self._stub.UnregisterSharedMemory(request, **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def shared_memory_status(self) -> List[SharedMemoryRegistration]:
        """This caller's registered regions, sorted by name."""
        try:
            response = self._stub.SharedMemoryStatus(
                pb.SharedMemoryStatusRequest(), **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return decode_shared_memory_status(response)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

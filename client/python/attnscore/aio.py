"""attnscore.aio.Client: the asyncio client (grpc.aio), with the blocking client's methods as
coroutines. Create it inside a running event loop and use it from that loop only."""
from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

import grpc
import grpc.aio

from attnscore import _channel
from attnscore._channel import Pem
from attnscore._errors import AttnscoreError, from_rpc_error
from attnscore._proto import attnscore_pb2 as pb
from attnscore._proto import attnscore_pb2_grpc as pb_grpc
from attnscore._wire import (SERVICE_NAME, ModelInfo, Request, ScoreResult, ServerInfo,
                             SharedMemoryRegistration, StreamCollector, as_request,
                             decode_info, decode_models, decode_response, encode_request_sized,
                             decode_shared_memory_status, register_request)
from attnscore._response import ChunkAssembler, MalformedChunks, ScoreReply

__all__ = ["Client", "AttnscoreError"]


class Client:
    """As attnscore.Client (same arguments, same errors); `await` every method, `async with`."""

    def __init__(self, target: str, *, tls: bool = False, ca: Optional[Pem] = None,
                 cert: Optional[Pem] = None, key: Optional[Pem] = None,
                 server_name: Optional[str] = None, token: Optional[str] = None,
                 timeout: Optional[float] = None, allow_insecure_token: bool = False,
                 chunked_reply_bytes: int = _channel.CHUNKED_REPLY_BYTES) -> None:
        self._chunked_reply_bytes = _channel.check_chunked_reply_bytes(chunked_reply_bytes)
        self._config = _channel.channel_config(
            target, tls=tls, ca=ca, cert=cert, key=key, server_name=server_name, token=token,
            timeout=timeout, allow_insecure_token=allow_insecure_token)
        self._channel = _channel.open_channel(self._config, grpc.aio)
        self._stub = pb_grpc.AttentionScorerStub(self._channel)
        self._score, self._score_stream = _channel.score_callables(self._channel)
        self._score_chunked = _channel.score_chunked_callable(self._channel)
        self._chunked_unimplemented = False
        self._health_check = self._channel.unary_unary(
            _channel.HEALTH_CHECK_METHOD,
            request_serializer=_channel.encode_health_request,
            response_deserializer=_channel.decode_health_response)

    async def score(self, query: Any, key: Any, value: Any = None, *,
                    alibi: Optional[Sequence[float]] = None, model: Optional[str] = None,
                    causal: bool = False, scale: Optional[float] = None,
                    key_lengths: Optional[Sequence[int]] = None,
                    outputs: Union[str, Sequence[str]] = ("logits",), layout: str = "BHSD",
                    output_dtype: Any = None, as_torch: bool = False,
                    placements: Optional[Mapping[str, Any]] = None) -> ScoreResult:
        """See attnscore.Client.score."""
        request = Request(query, key, value, alibi=alibi, model=model, causal=causal,
                          scale=scale, key_lengths=key_lengths, outputs=outputs, layout=layout,
                          output_dtype=output_dtype, as_torch=as_torch,
                          placements=placements)
        message, reply_bytes = encode_request_sized(request)
        if (self._chunked_reply_bytes and reply_bytes >= self._chunked_reply_bytes
                and not self._chunked_unimplemented):
            reply = await self._score_in_chunks(message, reply_bytes)
            if reply is not None:
                return decode_response(reply, as_torch)
        try:
            response = await self._score(message, **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return decode_response(response, as_torch)

    async def _score_in_chunks(self, message: bytes, reply_bytes: int) -> Optional[ScoreReply]:
        """See attnscore.Client._score_in_chunks."""
        assembler = ChunkAssembler(reply_bytes)
        call = self._score_chunked(message, **_channel.call_kwargs(self._config))
        received = False
        try:
            async for part in call:
                received = True
                assembler.add(part)
            return assembler.finish()
        except (grpc.RpcError, MalformedChunks) as error:
            failure = _channel.chunked_failure(error, received, call)
            if failure is None:
                self._chunked_unimplemented = True
                return None
            raise failure from None

    async def score_many(self, requests: Iterable[Union[Request, Mapping[str, Any]]], *,
                         return_exceptions: bool = False) -> List[Any]:
        """See attnscore.Client.score_many."""
        collector = StreamCollector([as_request(item) for item in requests])
        if not collector.messages:
            return []
        try:
            call = self._score_stream(iter(collector.messages),
                                      **_channel.call_kwargs(self._config))
            async for response in call:
                collector.add(response)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return collector.results(return_exceptions)

    async def health(self, service: str = SERVICE_NAME) -> str:
        """See attnscore.Client.health."""
        try:
            return await self._health_check(service, **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_rpc_error(error) from None

    async def models(self) -> List[ModelInfo]:
        """See attnscore.Client.models."""
        try:
            response = await self._stub.ListModels(pb.ListModelsRequest(),
                                                   **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return decode_models(response)

    async def info(self) -> ServerInfo:
        """See attnscore.Client.info."""
        try:
            response = await self._stub.GetServerInfo(pb.GetServerInfoRequest(),
                                                      **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return decode_info(response)

    async def register_shared_memory(self, name: str, key: Any, byte_size: int,
                                     offset: int = 0) -> None:
        """See attnscore.Client.register_shared_memory."""
        request = register_request(name, key, byte_size, offset)
        try:
            await self._stub.RegisterSharedMemory(request, **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def unregister_shared_memory(self, name: str) -> None:
        """See attnscore.Client.unregister_shared_memory."""
        request = pb.UnregisterSharedMemoryRequest(name=name)
        try:
            await self._stub.UnregisterSharedMemory(request, **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def shared_memory_status(self) -> List[SharedMemoryRegistration]:
        """See attnscore.Client.shared_memory_status."""
        try:
            response = await self._stub.SharedMemoryStatus(
                pb.SharedMemoryStatusRequest(), **_channel.call_kwargs(self._config))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return decode_shared_memory_status(response)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

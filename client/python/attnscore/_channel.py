"""Channel settings shared by the blocking and the asyncio client: the target, the service
config (round robin, retries of UNAVAILABLE, like the C++ client's), TLS credentials, the bearer
token, and the grpc.health.v1 Check messages."""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Tuple, Union

# Before gRPC initialises (at its first channel; it reads the variable once): poll connection
# attempts every 100 ms rather than gRPC's 5 s, unless the process chose a value. Otherwise a
# server that came (back) up stays unused up to 5 s after it accepts, as in the C++ client library
# (client/client.cc PrepareGrpcForTheProcess).
os.environ.setdefault("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100")

import grpc  # noqa: E402

from attnscore._errors import AttnscoreError, from_rpc_error
from attnscore._response import MalformedChunks, parse_score_chunk, parse_score_response
from attnscore._wire import SERVICE_NAME

HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_CHECK_METHOD = f"/{HEALTH_SERVICE}/Check"
SCORE_METHOD = f"/{SERVICE_NAME}/Score"
SCORE_STREAM_METHOD = f"/{SERVICE_NAME}/ScoreStream"
SCORE_CHUNKED_METHOD = f"/{SERVICE_NAME}/ScoreChunked"
# Replies of this many bytes and more are asked for in chunks (ScoreChunked), as the C++ client
# does (ClientOptions::chunked_reply_bytes).
CHUNKED_REPLY_BYTES = 4 << 20
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_LIST_SCHEMES = ("ipv4:", "ipv6:", "unix:", "unix-abstract:")

# A PEM given as bytes / "-----BEGIN ..." text, or a path to a PEM file.
Pem = Union[bytes, str, os.PathLike]
Metadata = Tuple[Tuple[str, str], ...]


def _already_encoded(request: bytes) -> bytes:
    return request


def score_callables(channel: Any) -> Tuple[Any, Any]:
    """Score and ScoreStream on `channel` (grpc or grpc.aio): they take requests already encoded
    (_wire.encode_request, which copies the input bytes once), and each response's tensors are
    read in place from the bytes grpcio received (_response.py) rather than copied twice by
    protobuf."""
    score = channel.unary_unary(SCORE_METHOD, request_serializer=_already_encoded,
                                response_deserializer=parse_score_response)
    stream = channel.stream_stream(SCORE_STREAM_METHOD, request_serializer=_already_encoded,
                                   response_deserializer=parse_score_response)
    return score, stream


def check_chunked_reply_bytes(value: int) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"chunked_reply_bytes: expected an int >= 0, got {value!r}")
    return value


def score_chunked_callable(channel: Any) -> Any:
    """ScoreChunked on `channel` (grpc or grpc.aio): an encoded request in, ChunkParts out, each
    chunk's data a view of the bytes grpcio received (_response.py ChunkAssembler copies it into
    the result)."""
    return channel.unary_stream(SCORE_CHUNKED_METHOD, request_serializer=_already_encoded,
                                response_deserializer=parse_score_chunk)


def chunked_failure(error: Exception, received: bool, call: Any) -> Optional[AttnscoreError]:
    """What a ScoreChunked call that failed with `error` (a grpc.RpcError or MalformedChunks)
    raises: DATA_LOSS for a malformed reply (`call` is cancelled: nothing more is worth reading);
    None for UNIMPLEMENTED before any chunk (a server from before the method: ask it with Score);
    else the call's own error."""
    if isinstance(error, MalformedChunks):
        call.cancel()
        return AttnscoreError(grpc.StatusCode.DATA_LOSS, f"malformed ScoreChunk: {error}")
    if error.code() == grpc.StatusCode.UNIMPLEMENTED and not received:
        return None
    return from_rpc_error(error)


def service_config() -> str:
    """Round robin over every address of the target; UNAVAILABLE (queue full, draining, a dead
    connection) retried up to 5 attempts with 50 ms..1 s exponential backoff, throttled (the C++
    client's defaults, client/client.h RetryOptions)."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": SERVICE_NAME}, {"service": HEALTH_SERVICE}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.050000s",
                "maxBackoff": "1.000000s",
                "backoffMultiplier": 2.0,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
        "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
    }
    return json.dumps(config)


def _split_host_port(target: str) -> Tuple[str, str]:
    if target.startswith("["):
        host, sep, port = target[1:].partition("]:")
    else:
        host, sep, port = target.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"target {target!r}: expected host:port or [v6]:port")
    return host, port


def _resolve_list(targets: Sequence[str]) -> str:
    """"host:p,host2:q" as one "ipv4:" (or "ipv6:") target that round robin spreads calls over.
    Names are resolved once, here; for a changing set use "dns:///name:port"."""
    v4: list = []
    v6: list = []
    for target in (t.strip() for t in targets):
        if not target:
            continue
        host, port = _split_host_port(target)
        for family, _, _, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            if family == socket.AF_INET:
                text = f"{address[0]}:{address[1]}"
                v4 += [text] if text not in v4 else []
            elif family == socket.AF_INET6:
                text = f"[{address[0]}]:{address[1]}"
                v6 += [text] if text not in v6 else []
    if v4:
        return "ipv4:" + ",".join(v4)
    if v6:
        return "ipv6:" + ",".join(v6)
    raise ValueError("no target given")


def resolve_target(target: str) -> str:
    """gRPC's target syntax ("host:port", "dns:///name:port", "ipv4:a:p,b:q", "unix:/path"), or
    a comma-separated list of host:port."""
    target = target.strip()
    if not target:
        raise ValueError("no target given")
    if "," in target and not target.startswith(_LIST_SCHEMES):
        return _resolve_list(target.split(","))
    return target


def is_unix_socket(target: str) -> bool:
    """A Unix domain socket target ("unix:/path", "unix-abstract:name")."""
    return target.strip().startswith(("unix:", "unix-abstract:"))


# Most bytes one socket read takes over TCP (as the C++ client's
# ClientOptions::max_socket_read_bytes): gRPC 1.51 otherwise reads up to 4 MiB per recvmsg, and a
# receiver inside one long copy holds the socket while the kernel's receive processing waits.
# gRPC honours it only with its tcp_read_chunks experiment off (prefer_bounded_socket_reads).
MAX_SOCKET_READ_BYTES = 64 << 10


def prefer_bounded_socket_reads() -> None:
    """For a program, before its first channel (gRPC reads its experiments once): turns off gRPC
    1.51's tcp_read_chunks experiment (GRPC_EXPERIMENTS=-tcp_read_chunks), under which gRPC sizes
    socket reads itself and ignores the client's bound, unless the environment already sets
    GRPC_EXPERIMENTS. It changes the process's environment, so the library never calls it on its
    own. On an Intel VM a 64 MiB reply over loopback TCP came 5-8% sooner."""
    os.environ.setdefault("GRPC_EXPERIMENTS", "-tcp_read_chunks")


def channel_options(server_name: Optional[str], unix_socket: bool = False) -> list:
    """The channel arguments; a Unix socket keeps gRPC's read sizing (bounded reads made 64 MiB
    replies slower there)."""
    options = [
        ("grpc.service_config", service_config()),
        # Our service config is the whole truth: DNS TXT records do not replace it.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        # gRPC keeps a call's messages for a retry up to this size (its 256 KiB default would
        # make every prefill request unretriable).
        ("grpc.per_rpc_retry_buffer_size", 64 << 20),
        # The server allows pings every 10 s at most.
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 10000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A backend that is down is tried again after 1 s, then at most every 10 s (gRPC's
        # 120 s maximum would leave a restarted replica without traffic for minutes), as the
        # C++ client does (ReconnectOptions).
        ("grpc.initial_reconnect_backoff_ms", 1000),
        ("grpc.max_reconnect_backoff_ms", 10000),
        # Score matrices are large; the server's --max-output-bytes is the real bound.
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
    ]
    if not unix_socket:
        options.append(("grpc.experimental.tcp_max_read_chunk_size", MAX_SOCKET_READ_BYTES))
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def read_pem(value: Optional[Pem], what: str) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        with open(value, "rb") as pem:
            return pem.read()
    except OSError as error:
        raise ValueError(f"{what}: cannot read {value}: {error.strerror}") from None


@dataclass(frozen=True)
class ChannelConfig:
    """Everything a channel and its calls need, validated once."""

    target: str
    options: list
    credentials: Optional[grpc.ChannelCredentials]
    metadata: Metadata = field(default=())
    timeout: Optional[float] = None


def channel_config(target: str, *, tls: bool, ca: Optional[Pem], cert: Optional[Pem],
                   key: Optional[Pem], server_name: Optional[str], token: Optional[str],
                   timeout: Optional[float], allow_insecure_token: bool) -> ChannelConfig:
    if not tls and any(v is not None for v in (ca, cert, key, server_name)):
        raise ValueError("ca, cert, key and server_name need tls=True")
    if (cert is None) != (key is None):
        raise ValueError("mutual TLS needs both cert and key")
    local = is_unix_socket(target)
    if token is not None and not tls and not local and not allow_insecure_token:
        raise ValueError("token over plaintext: anyone on the path could read it; use tls=True, "
                         "a unix: target, or allow_insecure_token=True")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout: expected seconds > 0 or None, got {timeout!r}")
    credentials = None
    if tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_pem(ca, "ca"), private_key=read_pem(key, "key"),
            certificate_chain=read_pem(cert, "cert"))
    elif local:
        # gRPC's local credentials: the connection must be a Unix socket, whose bytes never
        # leave the host (the server's --listen-unix).
        credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
    return ChannelConfig(target=resolve_target(target),
                         options=channel_options(server_name, unix_socket=local),
                         credentials=credentials, metadata=bearer_metadata(token),
                         timeout=timeout)


def open_channel(config: ChannelConfig, grpc_module: Any = grpc) -> Any:
    """The channel `config` describes, from `grpc` (blocking) or `grpc.aio` (asyncio), whose
    channel constructors take the same arguments."""
    if config.credentials is None:
        return grpc_module.insecure_channel(config.target, options=config.options)
    return grpc_module.secure_channel(config.target, config.credentials, options=config.options)


def bearer_metadata(token: Optional[str]) -> Metadata:
    """("authorization", "Bearer <token>") on every call, or nothing."""
    if token is None:
        return ()
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("token: expected a non-empty single-line string")
    return (("authorization", f"Bearer {token}"),)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("malformed varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def encode_health_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{service}. Hand-encoded rather than generated: a second
    registration of grpc/health/v1/health.proto (grpcio-health-checking has one) in protobuf's
    default pool fails at import when the two descriptors differ."""
    name = service.encode()
    return b"\x0a" + _varint(len(name)) + name if name else b""


def decode_health_response(data: bytes) -> str:
    """The ServingStatus name of a grpc.health.v1.HealthCheckResponse."""
    status, pos = 0, 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        wire_type = key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            if key >> 3 == 1:
                status = value
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"HealthCheckResponse: unexpected wire type {wire_type}")
    return SERVING_STATUS.get(status, "UNKNOWN")


def call_kwargs(config: ChannelConfig) -> dict:
    return {"timeout": config.timeout, "metadata": config.metadata}


"""The one exception type of the package: a failed call, with its gRPC code and message."""
from __future__ import annotations

import grpc

__all__ = ["AttnscoreError"]

_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class AttnscoreError(Exception):
    """A call the server (or the channel) failed.

    `code` is a grpc.StatusCode (INVALID_ARGUMENT for a malformed request, NOT_FOUND for an
    unknown model, RESOURCE_EXHAUSTED, UNAVAILABLE after the retries, DEADLINE_EXCEEDED, ...);
    `message` is the server's message, which names the field and the expected and actual value.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def from_rpc_error(error: grpc.RpcError) -> AttnscoreError:
    """The AttnscoreError of a failed call (grpc.RpcError and grpc.aio.AioRpcError)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    return AttnscoreError(code or grpc.StatusCode.UNKNOWN, details or str(error))


def from_code_number(number: int, message: str) -> AttnscoreError:
    """The AttnscoreError of a ScoreStream response's `error` (a google.rpc.Code number)."""
    return AttnscoreError(_CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN), message)

"""attnscore: a Python client for the attnscore gRPC service (attention scores with ALiBi or
Transformer-XL relative position bias).

    import attnscore
    with attnscore.Client("127.0.0.1:50051") as client:
        result = client.score(q, k, v, causal=True, outputs=("logits", "probs", "context"))

attnscore.aio.Client is the asyncio variant. Failed calls raise attnscore.AttnscoreError.
"""
from attnscore._channel import prefer_bounded_socket_reads
from attnscore._errors import AttnscoreError
from attnscore._shared_memory import SharedMemoryRegion
from attnscore._wire import (BatchingOptions, Limits, ModelInfo, PlacedOutput, Placement,
                             Request, ScoreResult, ServerInfo, SharedMemoryRegistration, SharedTensor,
                             Timing)
from attnscore.client import Client

__version__ = "0.1.0"

__all__ = ["AttnscoreError", "BatchingOptions", "Client", "Limits", "ModelInfo", "PlacedOutput",
           "Placement", "Request", "ScoreResult", "ServerInfo", "SharedMemoryRegion",
           "SharedMemoryRegistration", "SharedTensor", "Timing", "__version__",
           "prefer_bounded_socket_reads"]

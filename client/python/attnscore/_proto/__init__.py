"""Generated protobuf and gRPC modules of attnscore.v1 (see tools/generate_stubs.py)."""

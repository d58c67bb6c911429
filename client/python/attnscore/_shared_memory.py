"""attnscore.SharedMemoryRegion: a POSIX shared-memory object (shm_open) to register with the
server, to read placed outputs from and to hold inputs the server reads in place, over Python's
multiprocessing.shared_memory."""
from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory
from typing import Any, Union

import numpy as np

from attnscore import _tensors
from attnscore._proto import attnscore_pb2 as pb
from attnscore._wire import PlacedOutput, SharedTensor

# Keys this process created and has not removed: the resource tracker tracks each name once.
_CREATED: set = set()


class SharedMemoryRegion:
    """A POSIX shared-memory object named `key` (shm_open("/" + key); the key must start with
    the server's --shm-prefix, see info().limits.shm_prefix).

    create=True (the default) creates it with `byte_size` bytes and removes it (shm_unlink) on
    close(); create=False opens an existing object (byte_size ignored) and leaves it in place.
    Register it with client.register_shared_memory(name, region.key, region.byte_size), place
    outputs in it with score(..., placements={"logits": (name, offset, byte_size)}), and read
    them with view(result.placed["logits"]). Inputs: put(name, offset, array) writes an array
    into the region and returns a SharedTensor to pass as query, key or value, which the server
    then reads in place. Arrays from view() are views of the region: drop them (or copy them)
    before close(), which fails with BufferError while they exist.
    """

    def __init__(self, key: str, byte_size: int = 0, *, create: bool = True) -> None:
        if not isinstance(key, str) or not key or key.startswith("/"):
            raise ValueError(f"key: expected the object's name without a leading '/', "
                             f"got {key!r}")
        if create and int(byte_size) <= 0:
            raise ValueError(f"byte_size: expected > 0, got {byte_size}")
        self._owner = bool(create)
        self._shm = shared_memory.SharedMemory(name=key, create=self._owner,
                                               size=int(byte_size) if create else 0)
        if self._owner:
            _CREATED.add(key)
        elif key not in _CREATED:
            # Python (before 3.13) tracks objects it merely opened too, and unlinks them when the
            # process exits: not ours to remove.
            try:
                resource_tracker.unregister(self._shm._name, "shared_memory")  # type: ignore
            except Exception:  # noqa: BLE001 - tracking is best effort
                pass
        self._closed = False

    @property
    def key(self) -> str:
        return self._shm.name.lstrip("/")

    @property
    def byte_size(self) -> int:
        return self._shm.size

    @property
    def buf(self) -> memoryview:
        """The whole object, writable."""
        return self._shm.buf

    def view(self, placed: Union[PlacedOutput, SharedTensor],
             region_offset: int = 0) -> np.ndarray:
        """A writable numpy array over a placed output's bytes or a SharedTensor's (no copy;
        ml_dtypes.bfloat16 for bfloat16, like score's outputs). region_offset: the `offset` the
        region was registered with (placements and shared inputs count from the registered
        range's start)."""
        if not isinstance(placed, (PlacedOutput, SharedTensor)):
            raise TypeError(f"view: expected a PlacedOutput (result.placed[name]) or a "
                            f"SharedTensor, got {type(placed)!r}")
        dtype = _tensors._numpy_dtype(_tensors.dtype_number(placed.dtype))
        count = int(np.prod(placed.shape, dtype=np.int64))
        start = int(region_offset) + int(placed.offset)
        if (count * dtype.itemsize != placed.byte_size or start < 0
                or start + placed.byte_size > self.byte_size):
            raise ValueError(f"view: {placed} does not fit this region of {self.byte_size} "
                             f"bytes at region_offset {region_offset}")
        return np.frombuffer(self.buf, dtype=dtype, count=count,
                             offset=start).reshape(placed.shape)

    def put(self, region: str, offset: int, array: Any, region_offset: int = 0) -> SharedTensor:
        """Writes `array` (numpy: float32, float16, ml_dtypes.bfloat16; or a torch tensor) at
        `offset` of the region registered as `region` (region_offset: the `offset` it was
        registered with) and returns the SharedTensor to pass as query, key or value. One copy,
        into the region; ValueError when it does not fit."""
        number, values = _tensors.wire_array(array, "array")
        shared = SharedTensor(region, int(offset), _tensors.DTYPE_NAMES[number],
                              tuple(values.shape))
        start = int(region_offset) + shared.offset
        if start < 0 or start + shared.byte_size > self.byte_size:
            raise ValueError(f"put: {shared.byte_size} bytes at {start} do not fit this region "
                             f"of {self.byte_size} bytes")
        # Little-endian, like the wire; bfloat16 as its bits.
        target = np.frombuffer(self.buf, dtype=values.dtype.newbyteorder("<"),
                               count=values.size, offset=start)
        target[...] = values.reshape(-1)
        return shared

    def close(self) -> None:
        """Unmaps the object, and removes it if this region created it."""
        if self._closed:
            return
        self._shm.close()
        self._closed = True
        if self._owner:
            _CREATED.discard(self.key)
            self._shm.unlink()

    def __enter__(self) -> "SharedMemoryRegion":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SharedMemoryRegion(key={self.key!r}, byte_size={self.byte_size})"


__all__ = ["SharedMemoryRegion", "pb"]

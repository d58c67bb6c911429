"""Tensors between numpy / torch and the wire (attnscore.v1.Tensor: dtype, shape, bytes).

Inputs: numpy arrays (float32, float16, ml_dtypes.bfloat16) and torch tensors (float32, float16,
bfloat16; any device, copied to the CPU). Outputs: read-only numpy arrays over the response's
bytes (np.frombuffer: no copy), or torch tensors (a writable copy: torch has no read-only tensors).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Optional, Tuple

import grpc
import numpy as np

from attnscore._errors import AttnscoreError
from attnscore._proto import attnscore_pb2 as pb

DTYPE_NAMES = {pb.FLOAT32: "float32", pb.FLOAT16: "float16", pb.BFLOAT16: "bfloat16"}
_DTYPES_BY_NAME = {name: number for number, name in DTYPE_NAMES.items()}


def _torch() -> Any:
    """The torch module if the caller has imported it (inputs can only be torch tensors then)."""
    return sys.modules.get("torch")


def _is_torch_tensor(value: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor)


def import_optional(name: str, why: str) -> Any:
    """Imports `name` or raises an ImportError that says what it is needed for."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"{why} needs the '{name}' package (pip install {name})") from error


def _dtype_name(dtype: Any) -> str:
    """'float32', 'float16' or 'bfloat16' for a numpy dtype, a torch dtype or a string."""
    if isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.")
    elif _torch() is not None and isinstance(dtype, _torch().dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = np.dtype(dtype).name
    return {"float": "float32", "half": "float16", "bf16": "bfloat16"}.get(name, name)


def dtype_number(dtype: Any) -> int:
    """The wire DType of a dtype spec; TypeError for anything but float32, float16, bfloat16."""
    name = _dtype_name(dtype)
    if name not in _DTYPES_BY_NAME:
        raise TypeError(f"dtype {dtype!r}: expected float32, float16 or bfloat16")
    return _DTYPES_BY_NAME[name]


def _numpy_checked(value: Any, what: str) -> Tuple[int, np.ndarray]:
    """The wire DType of an array-like and it as a numpy array; TypeError for other dtypes."""
    array = np.asarray(value)
    try:
        number = dtype_number(array.dtype)
    except TypeError:
        raise TypeError(f"{what}: dtype {array.dtype} is not supported; use float32, float16 or "
                        f"bfloat16 (e.g. {what}.astype(np.float32))") from None
    return number, array


def wire_array(value: Any, what: str) -> Tuple[int, np.ndarray]:
    """The wire DType of a numpy array or torch tensor (float32, float16, bfloat16) and a numpy
    array of its values, with bfloat16 as its uint16 bits (no ml_dtypes needed); no copy where
    the value already is such an array. TypeError for other dtypes."""
    if _is_torch_tensor(value):
        cpu = value.detach().to("cpu").contiguous()
        number = dtype_number(cpu.dtype)
        if number == pb.BFLOAT16:
            return number, cpu.view(_torch().int16).numpy().view(np.uint16)
        return number, cpu.numpy()
    number, array = _numpy_checked(value, what)
    return number, array.view(np.uint16) if number == pb.BFLOAT16 else array


def wire_input(value: Any, what: str) -> Tuple[int, np.ndarray]:
    """wire_array's answer as the bytes the wire carries: C-contiguous and little-endian (a copy
    only where the value is neither)."""
    number, array = wire_array(value, what)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return number, np.ascontiguousarray(array)


def _numpy_dtype(number: int) -> np.dtype:
    if number == pb.BFLOAT16:
        ml_dtypes = import_optional("ml_dtypes",
                                    "bfloat16 outputs as numpy arrays (or as_torch=True)")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({pb.FLOAT32: "<f4", pb.FLOAT16: "<f2"}[number])


def _torch_dtype(number: int) -> Any:
    torch = import_optional("torch", "as_torch=True")
    return {pb.FLOAT32: torch.float32, pb.FLOAT16: torch.float16,
            pb.BFLOAT16: torch.bfloat16}[number]


def check_decodable(number: int, as_torch: bool) -> None:
    """Raises ImportError before a call whose outputs could not be decoded."""
    if as_torch:
        _torch_dtype(number)
    else:
        _numpy_dtype(number)


def from_wire(tensor: Any, as_torch: bool) -> Any:
    """A read-only numpy view of the tensor's bytes, or a torch tensor (a copy). `tensor`: a
    WireTensor (_response.py) or anything with its dtype, shape and data."""
    if tensor.dtype not in DTYPE_NAMES:
        raise AttnscoreError(grpc.StatusCode.INTERNAL,
                             f"response tensor with unknown dtype {tensor.dtype}")
    shape = tuple(tensor.shape)
    data = tensor.data
    itemsize = 4 if tensor.dtype == pb.FLOAT32 else 2
    if len(data) != int(np.prod(shape, dtype=np.int64)) * itemsize:
        raise AttnscoreError(grpc.StatusCode.INTERNAL,
                             f"response tensor of shape {list(shape)} has {len(data)} bytes")
    if as_torch:
        torch = import_optional("torch", "as_torch=True")
        dtype = _torch_dtype(tensor.dtype)
        if not len(data):
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)
    return np.frombuffer(data, dtype=_numpy_dtype(tensor.dtype)).reshape(shape)


def wire_number(tensor: Optional[pb.Tensor]) -> int:
    return tensor.dtype if tensor is not None else pb.DTYPE_UNSPECIFIED

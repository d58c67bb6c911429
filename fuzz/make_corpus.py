#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora under fuzz/corpus/<target>/ (committed; rerun after a format
change): small valid inputs and near-valid ones that stop at each check.

    .venv/bin/python fuzz/make_corpus.py      # needs torch (Debian's python3-torch) for state_dict

The request seeds are hand-encoded protobuf (the wire format is stable and this keeps the script
free of generated code); the first byte of each is the fuzzer's slice count selector.
"""
import collections
import io
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


# --- protobuf wire format -------------------------------------------------------------------------
def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_bytes(num, b):
    return varint(num << 3 | 2) + varint(len(b)) + b


def field_float(num, f):
    return varint(num << 3 | 5) + struct.pack('<f', f)


def tensor(dtype, shape, fill=0.5):
    n = 1
    for d in shape:
        n *= d
    size = {1: 4, 2: 2, 3: 2}[dtype]
    if dtype == 1:
        data = struct.pack('<%df' % n, *([fill] * n))
    else:
        data = b'\x00\x38' * n  # 0.5 in float16
    packed = b''.join(varint(d) for d in shape)
    return (field_varint(1, dtype) + field_bytes(2, packed) +
            (field_bytes(3, data) if n * size else b''))


def request(bias, q, k, v=None, outputs=(3,), extra=b''):
    msg = field_bytes(1, b'seed') + bias + field_bytes(4, q) + field_bytes(5, k)
    if v is not None:
        msg += field_bytes(6, v)
    msg += field_bytes(11, b''.join(varint(o) for o in outputs))
    return msg + extra


def request_seeds():
    alibi = field_bytes(2, field_bytes(1, struct.pack('<2f', 0.5, 0.25)))
    rel = field_bytes(3, field_bytes(1, b'txl'))
    shape = [1, 2, 3, 4]
    seeds = {
        'alibi_f32_context': request(alibi, tensor(1, shape), tensor(1, shape), tensor(1, shape)),
        'alibi_causal_logits_probs': request(
            alibi, tensor(1, shape), tensor(1, shape), outputs=(1, 2),
            extra=field_varint(8, 1) + field_float(9, 0.125)),
        'alibi_f16_bshd': request(alibi, tensor(2, [1, 3, 2, 4]), tensor(2, [1, 3, 2, 4]),
                                  tensor(2, [1, 3, 2, 4]), extra=field_varint(7, 2)),
        'relative_txl': request(rel, tensor(1, shape), tensor(1, shape), tensor(1, shape)),
        'key_lengths': request(alibi, tensor(1, [2, 2, 3, 4]), tensor(1, [2, 2, 3, 4]),
                               tensor(1, [2, 2, 3, 4]),
                               extra=field_bytes(10, varint(2) + varint(3))),
        # Near-valid: each stops at one check.
        'unknown_model': request(field_bytes(3, field_bytes(1, b'nope')), tensor(1, shape),
                                 tensor(1, shape), tensor(1, shape)),
        'shape_bytes_mismatch': request(alibi, tensor(1, shape)[:-4], tensor(1, shape)),
        'huge_dims': request(alibi, tensor(1, [1 << 40, 1 << 40, 0, 4]), tensor(1, shape)),
        'negative_dim': request(alibi, field_varint(1, 1) + field_bytes(2, varint(-1)),
                                tensor(1, shape)),
        'nan_scale': request(alibi, tensor(1, shape), tensor(1, shape),
                             extra=field_float(9, float('nan'))),
        'empty': b'',
    }
    # Where the service's own parser (score_request_parser.h) once disagreed with protobuf's.
    # The query with a non-length-delimited wire type is an unknown field, not a present query.
    seeds['parser_query_fixed32'] = (field_bytes(1, b'seel') + varint(82 << 3 | 1) + bytes(8) +
                                     (varint(4 << 3 | 5) + b'%%%%') * 4)
    # A 6-byte tag (protobuf refuses it; a varint reader alone would not).
    seeds['parser_overlong_tag'] = field_varint(8, 39) + b'\xc0\x80\x80\x80\x80\x00' + varint(1)
    # A tensor whose length runs one byte past the end of the message.
    inner = tensor(1, shape)
    seeds['parser_tensor_past_end'] = (field_bytes(1, b'seed') + varint(4 << 3 | 2) +
                                       varint(len(inner) + 1) + inner)
    for i, (name, body) in enumerate(sorted(seeds.items())):
        write('request', name, bytes([i % 4]) + body)


def kserve_input(name, datatype, shape):
    return (field_bytes(1, name.encode()) + field_bytes(2, datatype.encode()) +
            field_bytes(3, b''.join(varint(d) for d in shape)))


def kserve_seeds():
    """ModelInferRequest seeds (fields: model_name 1, id 3, parameters 4, inputs 5, outputs 6,
    raw_input_contents 7)."""
    shape = [1, 2, 3, 4]
    n = 24
    floats = struct.pack(f'<{n}f', *[0.1 * i for i in range(n)])
    halves = struct.pack(f'<{n}e', *[0.1 * i for i in range(n)])
    causal = field_bytes(4, field_bytes(1, b'causal') + field_bytes(2, field_varint(1, 1)))
    logits = field_bytes(6, field_bytes(1, b'logits'))

    def infer(inputs, raws, extra=b''):
        msg = field_bytes(1, b'alibi') + field_bytes(3, b'seed') + extra
        msg += b''.join(field_bytes(5, kserve_input(*i)) for i in inputs)
        return msg + logits + b''.join(field_bytes(7, r) for r in raws)

    qk = [('query', 'FP32', shape), ('key', 'FP32', shape)]
    seeds = {
        'fp32_raw': infer(qk, [floats, floats], causal),
        # Two map entries: the check compares messages with maps in key order.
        'two_parameters': infer(qk, [floats, floats], causal + field_bytes(
            4, field_bytes(1, b'scale') +
            field_bytes(2, varint(4 << 3 | 1) + struct.pack('<d', 0.5)))),
        'fp16_raw_key_lengths': infer(
            [('query', 'FP16', shape), ('key', 'FP16', shape), ('key_lengths', 'INT32', [1])],
            [halves, halves, struct.pack('<i', 2)]),
        'nan_key': infer(qk, [floats, floats[:-4] + struct.pack('<f', float('nan'))]),
        'raw_before_inputs': (field_bytes(7, floats) + field_bytes(7, floats) +
                              infer(qk, [])),
        'raw_count_mismatch': infer(qk, [floats]),
        'empty': b'',
    }
    for i, (name, body) in enumerate(sorted(seeds.items())):
        write('kserve', name, bytes([i % 4]) + body)


# --- safetensors ---------------------------------------------------------------------------------
def safetensors(header, payload, pad=True):
    h = json.dumps(header, separators=(',', ':')).encode()
    if pad:
        h += b' ' * ((8 - (len(h) + 8) % 8) % 8)
    return struct.pack('<Q', len(h)) + h + payload


def safetensors_seeds():
    f32 = struct.pack('<6f', *range(6))
    seeds = {
        'one_f32': safetensors({'t': {'dtype': 'F32', 'shape': [2, 3], 'data_offsets': [0, 24]}},
                               f32),
        'relative_model': safetensors({
            '__metadata__': {'format': 'pt'},
            'key_pos_embeddings': {'dtype': 'F32', 'shape': [4, 1, 2], 'data_offsets': [0, 32]},
            'key_pos_bias': {'dtype': 'F32', 'shape': [4, 1], 'data_offsets': [32, 48]},
            'query_pos_bias': {'dtype': 'F32', 'shape': [1, 2], 'data_offsets': [48, 56]},
        }, bytes(56)),
        'dtypes': safetensors({
            'h': {'dtype': 'F16', 'shape': [2], 'data_offsets': [0, 4]},
            'b': {'dtype': 'BF16', 'shape': [2], 'data_offsets': [4, 8]},
            'i': {'dtype': 'I64', 'shape': [1], 'data_offsets': [8, 16]},
            'd': {'dtype': 'F64', 'shape': [], 'data_offsets': [16, 24]},
            'z': {'dtype': 'U8', 'shape': [0, 5], 'data_offsets': [24, 24]},
        }, bytes(24)),
        'overflow_shape': safetensors(
            {'t': {'dtype': 'F32', 'shape': [1 << 32, 1 << 32], 'data_offsets': [0, 0]}}, b''),
        'overlap': safetensors({
            'a': {'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]},
            'b': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]}}, bytes(8)),
        'nested_metadata': safetensors({'__metadata__': {'k': [[[[[[[[[1]]]]]]]]]}}, b''),
        'truncated': safetensors({'t': {'dtype': 'F32', 'shape': [2, 3],
                                        'data_offsets': [0, 24]}}, f32)[:30],
    }
    for name, data in seeds.items():
        write('safetensors', name, data)


# --- torch.save ----------------------------------------------------------------------------------
def state_dict_seeds():
    import torch
    torch.manual_seed(0)

    def saved(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    base = torch.arange(12, dtype=torch.float32)
    seeds = {
        'one_tensor': saved({'w': torch.randn(2, 3)}),
        'ordered_with_metadata': saved(torch.nn.Linear(3, 2).state_dict()),
        'shared_storage_views': saved({'a': base[:6].view(2, 3), 'b': base[6:], 'c': base}),
        'dtypes': saved({'h': torch.ones(2, dtype=torch.float16),
                         'bf': torch.ones(2, dtype=torch.bfloat16),
                         'l': torch.arange(3), 'b': torch.tensor([True, False])}),
        'expand': saved({'e': torch.arange(3.0).expand(4, 3)}),
        'relative_model': saved(collections.OrderedDict(
            key_pos_embeddings=torch.zeros(4, 1, 2), key_pos_bias=torch.zeros(4, 1),
            query_pos_bias=torch.zeros(1, 2))),
    }
    seeds['truncated'] = seeds['one_tensor'][:len(seeds['one_tensor']) // 2]
    for name, data in seeds.items():
        write('state_dict', name, data)


if __name__ == '__main__':
    request_seeds()
    kserve_seeds()
    safetensors_seeds()
    if '--no-torch' not in sys.argv:
        state_dict_seeds()

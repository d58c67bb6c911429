# Writes every fixture of tests/scoring/state_dict_test.cc into argv[1], plus
# manifest.tsv: one line per tensor that LoadStateDict must return,
# "file \t key \t dtype \t shape \t raw-bytes file". Crafted archives (zipfile +
# pickle with stand-in objects) cover what torch.save itself never writes.
# Run by the test with the project venv's python; its contents key the
# fixture cache, so an edit regenerates the fixtures.
import collections, datetime, io, os, pickle, sys, zipfile
import torch
import torch.nn as nn

out = sys.argv[1]
manifest = []
DTYPE_NAMES = {
    torch.float32: 'float32', torch.float16: 'float16', torch.bfloat16: 'bfloat16',
    torch.float64: 'float64', torch.int64: 'int64', torch.int32: 'int32', torch.int16: 'int16',
    torch.int8: 'int8', torch.uint8: 'uint8', torch.bool: 'bool', torch.complex64: 'complex64',
}

def path(name):
    return os.path.join(out, name)

def expect(name, tensors):
    for key, t in tensors.items():
        t = t.detach().contiguous()
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        bin_name = '%s.%d.bin' % (name, len(manifest))
        with open(path(bin_name), 'wb') as f:
            f.write(raw)
        shape = ','.join(str(d) for d in t.shape)
        manifest.append('\t'.join([name, key, DTYPE_NAMES[t.dtype], shape, bin_name]))

def save(name, obj, **kwargs):
    torch.save(obj, path(name), **kwargs)
    expect(name, obj)

torch.manual_seed(0)
save('dtypes.pt', {
    'f32': torch.randn(3, 5),
    'f16': (torch.randn(4, 3) * 100).half(),
    'bf16': torch.randn(2, 3, 4).bfloat16(),
    'f64': torch.randn(7, dtype=torch.float64),
    'i64': torch.tensor([-(2 ** 40), -1, 0, 1, 2 ** 62], dtype=torch.int64),
    'i32': torch.arange(-5, 5, dtype=torch.int32).reshape(2, 5),
    'i16': torch.tensor([-32768, 0, 32767], dtype=torch.int16),
    'i8': torch.tensor([-128, 0, 127], dtype=torch.int8),
    'u8': torch.arange(256, dtype=torch.uint8),
    'bool': torch.tensor([[True, False], [False, True]]),
    'c64': torch.randn(3, dtype=torch.complex64),
    'scalar': torch.tensor(3.5),
    'empty': torch.zeros(0, 3),
    'special': torch.tensor([float('inf'), float('-inf'), float('nan'), -0.0, 1e-45]),
})

# Views saved as they are: torch.save writes the whole shared storage once, plus each view's
# offset and strides.
big = torch.arange(60, dtype=torch.float32).reshape(5, 12)
save('views.pt', {
    'slice': big[1:, ::2],
    'transpose': big.t(),
    'row': big[2],
    'whole': big,
    'expand': torch.arange(3, dtype=torch.float32).expand(4, 3),
    'half_cols': torch.arange(48, dtype=torch.float16).reshape(6, 8)[:, 1:7:3],
    'bf16_t': torch.arange(12, dtype=torch.float32).reshape(3, 4).bfloat16().t(),
})

# Laid out like labml's RelativeMultiHeadAttention (PrepareForMultiHeadAttention holds .linear).
class PrepareForMultiHeadAttention(nn.Module):
    def __init__(self, d_model, heads, d_k, bias):
        super().__init__()
        self.linear = nn.Linear(d_model, heads * d_k, bias=bias)

class RelativeMultiHeadAttention(nn.Module):
    def __init__(self, heads=2, d_model=8, P=3):
        super().__init__()
        d_k = d_model // heads
        self.query = PrepareForMultiHeadAttention(d_model, heads, d_k, True)
        self.key = PrepareForMultiHeadAttention(d_model, heads, d_k, False)
        self.value = PrepareForMultiHeadAttention(d_model, heads, d_k, True)
        self.output = nn.Linear(d_model, d_model)
        self.key_pos_embeddings = nn.Parameter(
            torch.arange(2 * P * heads * d_k, dtype=torch.float32).reshape(2 * P, heads, d_k) / 8)
        self.key_pos_bias = nn.Parameter(
            torch.arange(2 * P * heads, dtype=torch.float32).reshape(2 * P, heads) - 5)
        self.query_pos_bias = nn.Parameter(torch.randn(heads, d_k))

module = RelativeMultiHeadAttention()
state = module.state_dict()
assert isinstance(state, collections.OrderedDict) and state._metadata
save('module.pt', state)
save('module_p4.pt', state, pickle_protocol=4)  # FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL
save('module_vars.pt', module.state_dict(keep_vars=True))  # Parameters: _rebuild_parameter
tied = torch.randn(4)
save('tied.pt', {'a': tied, 'b': tied, 'c': tied[1:3]})

# Not loadable.
torch.save(state, path('legacy.pt'), _use_new_zipfile_serialization=False)
torch.save({'w': torch.ones(2), 'when': datetime.date(2020, 1, 2)}, path('unknown_global.pt'))
torch.save(nn.Linear(2, 2), path('whole_module.pt'))
torch.save({'w': torch.ones(2), 'step': 3}, path('non_tensor.pt'))
torch.save({'model': state, 'epoch': 1}, path('nested.pt'))
torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path('torchscript.pt'))
with open(path('bare_pickle.pt'), 'wb') as f:
    pickle.dump({'a': 1}, f, protocol=2)

# Hand-made archives: stand-ins pickle exactly as torch.save's tensors and storages do, with
# whatever offsets, sizes and persistent ids a damaged or hostile file could carry.
class FakeStorage:
    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel

class FakeTensor:
    def __init__(self, storage, offset, size, stride, extra=()):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict()) + extra
    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)

def storage_pid(obj):
    if isinstance(obj, FakeStorage):
        return ('storage', obj.storage_type, obj.key, 'cpu', obj.numel)
    return None

def craft(name, obj, records, pid=storage_pid, extra_records=()):
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.persistent_id = pid
    pickler.dump(obj)
    with zipfile.ZipFile(path(name), 'w') as z:
        z.writestr('archive/data.pkl', buf.getvalue())
        for key, data in records.items():
            z.writestr('archive/data/' + key, data)
        z.writestr('archive/version', '3\n')
        for record, data in extra_records:
            z.writestr('archive/' + record, data)

six = torch.arange(6, dtype=torch.float32)
records = {'0': six.numpy().tobytes()}
s6 = FakeStorage('0', torch.FloatStorage, 6)
craft('crafted_ok.pt', {'t': FakeTensor(s6, 1, (2, 2), (1, 2))}, records)
expect('crafted_ok.pt', {'t': six.as_strided((2, 2), (1, 2), 1)})
craft('meta_empty.pt', {'t': FakeTensor(s6, 0, (6,), (1,), ({},))}, records)
expect('meta_empty.pt', {'t': six})
craft('meta_conj.pt', {'t': FakeTensor(s6, 0, (6,), (1,), ({'conj': True},))}, records)
craft('out_of_bounds.pt', {'t': FakeTensor(s6, 2, (3, 2), (2, 1))}, records)
craft('numel_mismatch.pt', {'t': FakeTensor(FakeStorage('0', torch.FloatStorage, 8), 0, (6,), (1,))},
      records)
craft('missing_record.pt', {'t': FakeTensor(FakeStorage('9', torch.FloatStorage, 6), 0, (6,), (1,))},
      records)
craft('rank_mismatch.pt', {'t': FakeTensor(s6, 0, (2, 3), (3,))}, records)
craft('negative_stride.pt', {'t': FakeTensor(s6, 5, (6,), (-1,))}, records)
craft('huge_expand.pt', {'t': FakeTensor(s6, 0, (1 << 20, 1 << 20), (0, 0))}, records)
craft('numel_overflow.pt', {'t': FakeTensor(s6, 0, (1 << 62, 4), (0, 1))}, records)
craft('long_int.pt', {'t': FakeTensor(s6, 1 << 70, (1,), (1,))}, records)
craft('bad_pid.pt', {'t': FakeTensor(s6, 0, (6,), (1,))}, records,
      pid=lambda o: ('module', o.storage_type, o.key, 'cpu', o.numel)
      if isinstance(o, FakeStorage) else None)
craft('dtype_conflict.pt', {'a': FakeTensor(s6, 0, (6,), (1,)),
                            'b': FakeTensor(FakeStorage('0', torch.IntStorage, 6), 0, (6,), (1,))},
      records)
craft('big_endian.pt', {'t': FakeTensor(s6, 0, (6,), (1,))}, records,
      extra_records=[('byteorder', 'big')])
craft('list_root.pt', [FakeTensor(s6, 0, (6,), (1,))], records)
craft('int_key.pt', {1: FakeTensor(s6, 0, (6,), (1,))}, records)

with open(path('manifest.tsv'), 'w') as f:
    f.write('\n'.join(manifest) + '\n')

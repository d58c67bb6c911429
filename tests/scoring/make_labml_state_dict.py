# Writes a labml RelativeMultiHeadAttention's torch.save(module.state_dict())
# to argv[1] and its three relative-position tensors as safetensors to argv[2],
# for tests/scoring/properties_test.cc (LabmlStateDictRoundTrip). Uses the real
# labml module when labml-nn is installed; otherwise a module with the same
# parameter names.
import sys, torch
from safetensors.torch import save_file
torch.manual_seed(0)
try:
    from labml_nn.transformers.xl.relative_mha import RelativeMultiHeadAttention
    m = RelativeMultiHeadAttention(heads=4, d_model=32, dropout_prob=0.0)
    # labml initialises the position biases to zero; make them informative.
    with torch.no_grad():
        for p in m.parameters(): p.normal_()
except ImportError:
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.key_pos_embeddings = torch.nn.Parameter(torch.randn(2 * 2**10, 4, 8))
            self.key_pos_bias = torch.nn.Parameter(torch.randn(2 * 2**10, 4))
            self.query_pos_bias = torch.nn.Parameter(torch.randn(4, 8))
            self.output = torch.nn.Linear(32, 32)
    m = M()
sd = m.state_dict()
torch.save(sd, sys.argv[1])
save_file({k: sd[k].contiguous() for k in ('key_pos_embeddings', 'key_pos_bias', 'query_pos_bias')}, sys.argv[2])

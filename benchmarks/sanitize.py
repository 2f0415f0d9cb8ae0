"""A small decode + fused GEMM run for compute-sanitizer (memcheck / racecheck):
    compute-sanitizer --tool memcheck python benchmarks/sanitize.py"""
import torch

import zipgen
from zipgen.runtime import decompress_cuda, gemm

w = (torch.randn(333, 1000, device="cuda") * 0.02).to(torch.bfloat16)
w.view(torch.int16).view(-1)[::97] = 0x7F81  # NaN payloads: fallbacks everywhere
ct = zipgen.compress(w)
assert torch.equal(decompress_cuda(ct).view(torch.int16), w.view(torch.int16))
w2 = (torch.randn(300, 1024, device="cuda") * 0.02).to(torch.bfloat16)
ct2 = zipgen.compress(w2)
for m in (1, 9, 40):
    x = torch.randn(m, 1024, device="cuda").to(torch.bfloat16)
    bias = torch.randn(300, device="cuda").to(torch.bfloat16)
    y = gemm(x, ct2, bias, fused=True)
    ref = x.float() @ w2.float().t() + bias.float()
    assert float((y.float() - ref).norm() / ref.norm()) < 5e-3
torch.cuda.synchronize()
print("sanitize run finished")

"""A small decode + fused GEMM run for compute-sanitizer (memcheck / racecheck):
    compute-sanitizer --tool memcheck python benchmarks/sanitize.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize.py
Covers both activation paths (direct, staged, with 1, 2 and 4 row groups sharing the staged
activations: named barriers), two strip rows per warp, a ragged last strip (K % 64 != 0), more than
48 KB of dynamic shared memory, fallback-heavy weights (patch rounds past 32 entries per strip),
and on an sm_90 GPU the wgmma variant (async-proxy reads of the staged activations).
racecheck reports hazards for the configurations with row_groups > 1 (named barriers with a
thread count); it reports them on the race-free benchmarks/racecheck_probe.py too, so they say
nothing about the kernel: there, tests/test_gpu_gemm.py::test_staged_activations_have_no_race
and synccheck are the checks. With row_groups = 1 racecheck must report none."""
import torch

import zipgen
from zipgen.codegen import ZipGemmConfig
from zipgen.runtime import decompress_cuda, gemm

w = (torch.randn(333, 1000, device="cuda") * 0.02).to(torch.bfloat16)
w.view(torch.int16).view(-1)[::97] = 0x7F81  # NaN payloads: fallbacks everywhere
ct = zipgen.compress(w)
assert torch.equal(decompress_cuda(ct).view(torch.int16), w.view(torch.int16))


def check(w, ct, m, cfg):
    x = torch.randn(m, w.shape[1], device="cuda").to(torch.bfloat16)
    bias = torch.randn(w.shape[0], device="cuda").to(torch.bfloat16)
    y = gemm(x, ct, bias, fused=True, config=cfg)
    ref = x.float() @ w.float().t() + bias.float()
    assert float((y.float() - ref).norm() / ref.norm()) < 5e-3, cfg


w2 = (torch.randn(300, 1608, device="cuda") * 0.02).to(torch.bfloat16)  # ragged: K % 64 = 8
ct2 = zipgen.compress(w2)
heavy = (torch.randn(64, 1024, device="cuda") * 0.02).to(torch.bfloat16)
heavy.view(torch.int16).view(-1)[::5] = 0x0001  # subnormals: > 128 fallbacks per strip
ct3 = zipgen.compress(heavy)
configs = [ZipGemmConfig(4, 1, 1, 1, False), ZipGemmConfig(4, 2, 2, 1, True),
           ZipGemmConfig(16, 1, 1, 1, True),  # > 48 KB of dynamic shared memory
           ZipGemmConfig(8, 4, 3, 1, True),
           ZipGemmConfig(8, 1, 1, 2, True),   # 2 row groups share staged activations; idle lanes
           ZipGemmConfig(8, 2, 1, 4, True),   # 4 row groups
           ZipGemmConfig(16, 4, 1, 4, True),
           ZipGemmConfig(4, 1, 2, 1, False, 2),  # two strip rows per warp (the last CTA's
           ZipGemmConfig(8, 2, 1, 2, True, 2),   # second one past N: clamped)
           ZipGemmConfig(4, 4, 1, 1, True, 2)]
if torch.cuda.get_device_capability() == (9, 0):  # the wgmma variant (sm_90a): wgmmas in flight
    configs += [ZipGemmConfig(4, 4, 1, 4, True, 1, True),  # across a strip (<= 32 tokens),
                ZipGemmConfig(8, 8, 1, 4, True, 1, True),  # waited per strip (64),
                ZipGemmConfig(8, 16, 1, 4, True, 1, True)]  # 128 tokens per CTA
for cfg in configs:
    for m in (1, 9, 40):
        check(w2, ct2, m, cfg)
    check(heavy, ct3, 5, cfg)
torch.cuda.synchronize()
print("sanitize run finished")

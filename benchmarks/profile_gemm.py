"""One fused ZipGEMM launch per configuration, for Nsight Compute:
    ncu --clock-control none -k regex:zipgemm --section ... \
        python benchmarks/profile_gemm.py N K M W T D RG SX RS [W T D RG SX RS ...]
(W T D RG SX RS: warps_per_cta token_tiles depth row_groups stage_x row_strips, stage_x as 0/1)"""
import sys

import torch

import zipgen
from zipgen.codegen import ZipGemmConfig
from zipgen.runtime import gemm

n, k, m = map(int, sys.argv[1:4])
cfgs = [ZipGemmConfig.from_numbers(sys.argv[i:i + 6]) for i in range(4, len(sys.argv), 6)]
w = (torch.randn(n, k, device="cuda") * 0.015).to(torch.bfloat16)
ct = zipgen.compress(w)
x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
for cfg in cfgs:
    gemm(x, ct, config=cfg, fused=True)
torch.cuda.synchronize()

"""One fused ZipGEMM launch per configuration, for Nsight Compute:
    ncu --clock-control none -k regex:zipgemm --section ... \
        python benchmarks/profile_gemm.py N K M W T D RG SX RS WG [W T D RG SX RS WG ...]
(W T D RG SX RS WG: warps_per_cta token_tiles depth row_groups stage_x row_strips wgmma, the
bools as 0/1; wgmma configurations need an sm_90 GPU)"""
import sys

import torch

import zipgen
from zipgen.codegen import ZipGemmConfig
from zipgen.runtime import gemm

n, k, m = map(int, sys.argv[1:4])
FIELDS = 7
if (len(sys.argv) - 4) % FIELDS:
    sys.exit(f"usage: {__doc__}")
cfgs = [ZipGemmConfig.from_numbers(sys.argv[i:i + FIELDS])
        for i in range(4, len(sys.argv), FIELDS)]
w = (torch.randn(n, k, device="cuda") * 0.015).to(torch.bfloat16)
ct = zipgen.compress(w)
x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
for cfg in cfgs:
    gemm(x, ct, config=cfg, fused=True)
torch.cuda.synchronize()

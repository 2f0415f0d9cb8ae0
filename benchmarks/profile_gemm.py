"""One fused ZipGEMM launch per configuration, for Nsight Compute:
    ncu --clock-control none -k regex:zipgemm --section ... \
        python benchmarks/profile_gemm.py [--fields F] N K M W T D RG SX RS WG [W T D RG SX RS WG ...]
(W T D RG SX RS WG: warps_per_cta token_tiles depth row_groups stage_x row_strips wgmma, the
bools as 0/1; wgmma configurations need an sm_90 GPU. --fields 10 adds x_strips, k_splits and
specialized to each configuration, --fields 11 strip_pairs too.)"""
import sys

import torch

import zipgen
from zipgen.codegen import ZipGemmConfig
from zipgen.runtime import gemm

argv = sys.argv[1:]
FIELDS = 7
if argv[:1] == ["--fields"]:
    FIELDS, argv = int(argv[1]), argv[2:]
n, k, m = map(int, argv[:3])
if (len(argv) - 3) % FIELDS:
    sys.exit(f"usage: {__doc__}")
cfgs = [ZipGemmConfig.from_numbers(argv[i:i + FIELDS]) for i in range(3, len(argv), FIELDS)]
w = (torch.randn(n, k, device="cuda") * 0.015).to(torch.bfloat16)
ct = zipgen.compress(w)
x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
for cfg in cfgs:
    gemm(x, ct, config=cfg, fused=True)
torch.cuda.synchronize()

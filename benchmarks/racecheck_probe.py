"""Does compute-sanitizer's racecheck understand named barriers with a thread count?

    compute-sanitizer --tool racecheck python benchmarks/racecheck_probe.py

A race-free kernel shaped like ZipGEMM's staged path (row_groups > 1): groups of 2 warps share
a double buffer and synchronise with `bar.sync id, 64` once per step, then two phases separated
by __syncthreads reuse memory the warps used before. On an H200 (compute-sanitizer of CUDA 13,
2026-11-28) racecheck reports hazards here (benchmarks/results/racecheck-probe-h200-2026-11-28.txt),
so its reports on such kernels are not evidence of a race."""
import torch
import cuda.core as cc

from zipgen.compile.nvrtc import compile_cubin
from zipgen.runtime.kernels import launch
SRC = r'''
extern "C" __global__ void __launch_bounds__(256) probe(float* out, int steps) {
  __shared__ float s[2048];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = warp / 2, member = warp % 2;
  float acc = 0.f;
  for (int j = 0; j < steps; ++j) {
    float* buf = s + 1024 + group * 128 + (j & 1) * 64;  // group's double buffer
    if (member == 0) buf[lane] = j + lane;                 // member 0 writes, both read
    s[warp * 128 + lane] = acc;                             // warp-private area
    __syncwarp();
    asm volatile("bar.sync %0, 64;" :: "r"(1 + group) : "memory");
    acc += buf[lane] + s[warp * 128 + ((lane + 1) & 31)];
  }
  __syncthreads();
  s[threadIdx.x] = acc;                                     // overlaps the warp areas
  __syncthreads();
  out[blockIdx.x * 256 + threadIdx.x] = s[(threadIdx.x + 32) & 255];
}'''
cubin = compile_cubin(SRC, "sm_90").cubin
kernel = cc.ObjectCode.from_cubin(cubin).get_kernel("probe")
out = torch.zeros(64 * 256, device="cuda")
launch(kernel, (64,), (256,), [out, 7], device=out.device)
torch.cuda.synchronize()
print("probe finished", float(out.sum()))

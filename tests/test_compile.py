"""zipgen.compile on a CPU-only machine: NVRTC cubins for every supported arch, and the on-disk cubin cache."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import zipgen
from zipgen.compile import (SUPPORTED_ARCHES, CubinCache, cache_key, compile_cubin, cubin_sm, get_or_compile,
                            nvrtc_version)
from zipgen.errors import CompileError, InputError

# One warp multiplies a 16x16 by a 16x8 BF16 tile on the tensor cores, as zipgen's fused GEMMs do.
MMA_KERNEL = r"""
#include <cuda_bf16.h>

extern "C" __global__ void zipgen_mma_probe(const __nv_bfloat162* a, const __nv_bfloat162* b, float* c) {
    const int lane = threadIdx.x;
    const __nv_bfloat162 a0 = a[lane * 4], a1 = a[lane * 4 + 1], a2 = a[lane * 4 + 2], a3 = a[lane * 4 + 3];
    const __nv_bfloat162 b0 = b[lane * 2], b1 = b[lane * 2 + 1];
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(*reinterpret_cast<const unsigned*>(&a0)), "r"(*reinterpret_cast<const unsigned*>(&a1)),
          "r"(*reinterpret_cast<const unsigned*>(&a2)), "r"(*reinterpret_cast<const unsigned*>(&a3)),
          "r"(*reinterpret_cast<const unsigned*>(&b0)), "r"(*reinterpret_cast<const unsigned*>(&b1)));
    for (int i = 0; i < 4; ++i) c[lane * 4 + i] = d[i];
}
"""


@pytest.fixture(autouse=True)
def cache_dir(cubin_cache_dir) -> Path:
    """Every test gets its own cubin cache (conftest.cubin_cache_dir)."""
    return cubin_cache_dir


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """The MMA kernel compiled once for each supported arch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZIPGEN_CACHE_DIR", str(tmp_path_factory.mktemp("arch-cache")))
        return {arch: compile_cubin(MMA_KERNEL, arch) for arch in SUPPORTED_ARCHES}


def _cuobjdump() -> str | None:
    from cuda.pathfinder import find_nvidia_binary_utility  # looks in PATH, CUDA_HOME and the pip wheels
    return find_nvidia_binary_utility("cuobjdump")


# --- NVRTC ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_mma_kernel_compiles_to_a_cubin_for_each_arch(compiled, arch):
    result = compiled[arch]
    assert result.cubin.startswith(b"\x7fELF")
    assert cubin_sm(result.cubin) == int(arch[3:5])
    assert b"zipgen_mma_probe" in result.cubin
    assert result.arch == arch and f"-arch={arch}" in result.options
    assert result.nvrtc_version == nvrtc_version()


@pytest.mark.parametrize("arch", SUPPORTED_ARCHES)
def test_cuobjdump_confirms_arch(compiled, arch, tmp_path):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not installed (pip install nvidia-cuda-cuobjdump)")
    path = tmp_path / f"{arch}.cubin"
    path.write_bytes(compiled[arch].cubin)
    elf = subprocess.run([tool, "-elf", str(path)], capture_output=True, text=True, check=True).stdout
    # cuobjdump tells sm_90a from sm_90 (the ELF header alone does not): "64-bit ELF: ..., sm=90a, toolkit=..."
    assert f"sm={arch[3:]}," in elf


def test_without_bundled_headers_the_runtime_wheel_headers_are_used(monkeypatch):
    import zipgen.compile.nvrtc as nvrtc_module
    monkeypatch.setattr(nvrtc_module, "nvrtc_version", lambda: (13, 2))  # as if NVRTC could not unpack headers
    result = compile_cubin(MMA_KERNEL, "sm_90")
    assert cubin_sm(result.cubin) == 90
    assert not any(o.startswith("--use-bundled-headers") for o in result.options)
    assert any(o.startswith("--include-path=") and Path(o.split("=", 1)[1], "cuda_bf16.h").is_file()
               for o in result.options)


def test_nvrtc_version_is_a_pair():
    major, minor = nvrtc_version()
    assert major >= 12 and minor >= 0


@pytest.mark.parametrize("arch", ["sm_75", "sm_100a", "compute_90", "90", "SM_90"])
def test_unknown_arch_is_rejected_with_the_supported_list(arch):
    with pytest.raises(InputError, match="sm_80, sm_86, sm_89, sm_90, sm_90a"):
        compile_cubin(MMA_KERNEL, arch)


@pytest.mark.parametrize("options", [("-arch=sm_80",), ("--gpu-architecture=sm_90",), "-lineinfo"])
def test_arch_in_options_or_options_as_string_is_rejected(options):
    with pytest.raises(InputError):
        compile_cubin(MMA_KERNEL, "sm_90", options=options)


def test_compile_error_carries_the_log_and_the_saved_source(cache_dir):
    source = MMA_KERNEL.replace("float d[4]", "flaot d[4]")
    with pytest.raises(CompileError) as info:
        compile_cubin(source, "sm_90a", source_name="broken_gemm.cu")
    err = info.value
    assert "flaot" in err.log and "error" in err.log
    assert err.log in str(err) and str(err.source_path) in str(err)
    assert err.source_path.name == "broken_gemm.cu" and err.source_path.read_text() == source
    assert cache_dir in err.source_path.parents


def test_include_dirs_and_options_reach_nvrtc(tmp_path):
    headers = tmp_path / "kernels"
    headers.mkdir()
    (headers / "zipgen_tile.cuh").write_text("#pragma once\nconstexpr int kTile = TILE;\n")
    source = '#include "zipgen_tile.cuh"\nextern "C" __global__ void k(int* out) { out[0] = kTile; }\n'
    result = compile_cubin(source, "sm_86", options=("-DTILE=64",), include_dirs=(headers,))
    assert result.cubin.startswith(b"\x7fELF") and "-DTILE=64" in result.options
    with pytest.raises(CompileError, match="zipgen_tile.cuh"):
        compile_cubin(source, "sm_86", options=("-DTILE=64",))
    with pytest.raises(InputError, match="not a folder"):
        compile_cubin(source, "sm_86", include_dirs=(tmp_path / "missing",))


def test_name_expressions_give_lowered_names():
    source = "template <int N> __global__ void fill(int* out) { out[threadIdx.x] = N; }\n"
    result = compile_cubin(source, "sm_80", name_expressions=("fill<4>",))
    mangled = result.lowered_names["fill<4>"]
    assert mangled.startswith("_Z") and mangled.encode() in result.cubin


# --- cache ------------------------------------------------------------------------------------------------

CONFIG = {"tile_m": 128, "tile_n": 64, "stages": 3}


@pytest.fixture
def nvrtc_calls(monkeypatch) -> list:
    """Counts the compiles get_or_compile runs."""
    import zipgen.compile.cache as cache_module
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return compile_cubin(*args, **kwargs)

    monkeypatch.setattr(cache_module, "compile_cubin", counting)
    return calls


def test_miss_then_hit_without_nvrtc(cache_dir, nvrtc_calls):
    first = get_or_compile(MMA_KERNEL, "sm_90a", "mma_probe", CONFIG)
    second = get_or_compile(MMA_KERNEL, "sm_90a", "mma_probe", dict(reversed(CONFIG.items())))
    assert (first.hit, second.hit) == (False, True) and nvrtc_calls == ["sm_90a"]
    assert first.cubin == second.cubin and cubin_sm(first.cubin) == 90
    assert first.path == cache_dir / zipgen.__version__ / "sm_90a" / "mma_probe" / f"{first.key}.cubin"
    sidecar = json.loads(first.path.with_suffix(".json").read_text())
    assert sidecar["key"] == first.key and sidecar["cubin_size"] == len(first.cubin)
    assert sidecar["inputs"]["config"] == CONFIG and sidecar["inputs"]["arch"] == "sm_90a"


def test_key_follows_every_input(tmp_path):
    base = dict(source=MMA_KERNEL, arch="sm_90", op="mma_probe", config=CONFIG, options=("-lineinfo", "-DA=1"))
    key = cache_key(**base).digest
    same = [dict(base, config=dict(reversed(CONFIG.items()))), dict(base, options=("-DA=1", "-lineinfo"))]
    assert all(cache_key(**kw).digest == key for kw in same)
    changed = [dict(base, source=MMA_KERNEL + "\n"), dict(base, arch="sm_90a"), dict(base, arch="sm_89"),
               dict(base, options=("-lineinfo",)), dict(base, config={**CONFIG, "stages": 4}),
               dict(base, op="mma_probe2")]
    digests = {cache_key(**kw).digest for kw in changed}
    assert key not in digests and len(digests) == len(changed)

    headers = tmp_path / "inc"
    headers.mkdir()
    (headers / "tile.cuh").write_text("constexpr int kTile = 64;\n")
    with_headers = cache_key(**base, include_dirs=(headers,)).digest
    (headers / "tile.cuh").write_text("constexpr int kTile = 128;\n")
    assert len({key, with_headers, cache_key(**base, include_dirs=(headers,)).digest}) == 3


@pytest.mark.parametrize("config, op", [({"dtype": object()}, "mma"), ({"x": float("nan")}, "mma"),
                                        (CONFIG, "../escape"), (CONFIG, "")])
def test_bad_config_or_op_is_rejected(config, op):
    with pytest.raises(InputError):
        cache_key(MMA_KERNEL, "sm_90", op, config)


def _corrupt_truncate(path: Path):
    path.write_bytes(path.read_bytes()[:100])


def _corrupt_flip(path: Path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_sidecar_garbage(path: Path):
    path.with_suffix(".json").write_text("{not json")


def _corrupt_sidecar_missing(path: Path):
    path.with_suffix(".json").unlink()


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_flip, _corrupt_sidecar_garbage,
                                     _corrupt_sidecar_missing])
def test_corrupt_entry_is_a_miss_and_gets_repaired(corrupt, nvrtc_calls):
    good = get_or_compile(MMA_KERNEL, "sm_80", "mma_probe", CONFIG)
    corrupt(good.path)
    repaired = get_or_compile(MMA_KERNEL, "sm_80", "mma_probe", CONFIG)
    again = get_or_compile(MMA_KERNEL, "sm_80", "mma_probe", CONFIG)
    assert [good.hit, repaired.hit, again.hit] == [False, False, True] and len(nvrtc_calls) == 2
    assert repaired.cubin == good.cubin == again.cubin == good.path.read_bytes()


def test_put_refuses_non_cubin_data(cache_dir):
    with pytest.raises(InputError):
        CubinCache().put(cache_key(MMA_KERNEL, "sm_80", "mma_probe", CONFIG), b"PTX text", {})


# A child process that waits for its sibling, then compiles the same key slowly enough to overlap it.
_CHILD = textwrap.dedent("""
    import hashlib, json, os, sys, time
    from pathlib import Path
    import zipgen.compile.cache as cache

    me, barrier = sys.argv[1], Path(sys.argv[2])
    real = cache.compile_cubin
    def slow(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)
    cache.compile_cubin = slow

    (barrier / me).touch()
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.01)
    entry = cache.get_or_compile(sys.stdin.read(), "sm_90a", "mma_probe", {"tile_m": 128})
    print(json.dumps({"hit": entry.hit, "sha": hashlib.sha256(entry.cubin).hexdigest(), "path": str(entry.path)}))
""")


def test_two_processes_compiling_one_key_share_one_entry(cache_dir, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "ZIPGEN_CACHE_DIR": str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(i), str(barrier)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outputs = [p.communicate(MMA_KERNEL, timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["hit"] for r in results) == [False, True]  # compiled once; the other waited and hit
    assert results[0]["sha"] == results[1]["sha"] and results[0]["path"] == results[1]["path"]

    entry = Path(results[0]["path"])
    assert sorted(p.name for p in entry.parent.iterdir() if not p.name.endswith(".lock")) == \
        [entry.name, entry.with_suffix(".json").name]  # no stray temp files
    hit = get_or_compile(MMA_KERNEL, "sm_90a", "mma_probe", {"tile_m": 128})
    assert hit.hit and hashlib.sha256(hit.cubin).hexdigest() == results[0]["sha"]

"""The benchmark scripts run on the GPU machine only, where a typo costs device time: on the CPU,
each one must at least import everything it names and parse its own command line (--help exits
before any CUDA call)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if "argparse" in p.read_text())
BENCH_EXTRA = ("matplotlib", "zipnn")  # pyproject's [bench] extra, which [test] does not install


def test_the_argparse_scripts_are_found():
    assert {"gemm.py", "e2e.py", "wgmma_ab.py", "winners_ab.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_imports_and_parses_help(script):
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], cwd=BENCHMARKS,
                         capture_output=True, text=True, timeout=120)
    for module in BENCH_EXTRA:
        if f"No module named '{module}'" in out.stderr:
            pytest.skip(f"{script} needs {module} from the bench extra (pip install -e '.[bench]')")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage:"), out.stdout[:500]


def test_e2e_profile_sums_the_union_of_kernel_intervals_and_names_their_kinds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import e2e_profile

    # overlapping, nested, touching and disjoint intervals, unsorted
    assert e2e_profile.busy_us([(5, 7), (0, 2), (1, 3), (1.5, 2.5), (3, 4), (10, 11)]) == 7
    assert e2e_profile.busy_us([]) == 0
    assert e2e_profile.kind_of("zipgemm_sm90_r16_t8_w16_d1_p2") == "zipgen"
    assert e2e_profile.kind_of("nvjet_tst_64x8_64x16_4x1_v_bz_TNT") == "cuBLAS GEMM"
    assert e2e_profile.kind_of("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16>") == \
        "cuBLAS GEMM"
    assert e2e_profile.kind_of("void pytorch_flash::flash_fwd_splitkv_kernel<...>") == "attention"
    assert e2e_profile.kind_of("triton_red_fused__to_copy_add_gemm_mean_mul_pow_rsqrt_0") == "Triton"


def test_fixed_cost_fits_intercept_and_rate(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import fixed_cost

    # 3 µs + bytes at 2.5 TB/s (2.5e6 bytes per µs)
    points = [(b, 3.0 + b / 2.5e6) for b in (1e6, 8e6, 30e6, 120e6)]
    intercept, rate = fixed_cost.fit(points)
    assert abs(intercept - 3.0) < 1e-6 and abs(rate - 2.5) < 1e-6

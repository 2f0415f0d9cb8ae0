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

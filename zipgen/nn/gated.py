"""Gated MLPs with their activation in the GEMM's epilogue.

A Llama-style MLP computes down_proj(act_fn(gate_proj(x)) * up_proj(x)) with SiLU. Once
fuse_siblings has stacked gate_proj and up_proj into one compressed layer, fuse_gated_mlps
replaces such an MLP by a GatedMLP running torch.ops.zipgen.gemm_silu_mul, which takes the
product in the GEMM kernel where it can (zipgen.runtime.gated): one launch fewer per layer.

Found by structure, confirmed by numbers, in any architecture: a module whose gate_proj and
up_proj are the two halves (gate first) of one stacked ZipLinear without bias, with a down_proj
and an act_fn that computes SiLU. It is replaced only if, on the input it received in one
forward pass of the model, the GatedMLP's output equals the module's bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .fuse import SiblingSlice, probe_run
from .linear import ZipLinear


class GatedMLP(nn.Module):
    """down_proj(silu(x Wg^T) * (x Wu^T)) with gate_up = [Wg; Wu]: a ZipLinear (the product in
    the GEMM's epilogue), or an nn.Linear once decompress_model has made it BF16 again (the
    product by PyTorch, as the MLP it replaced computed it)."""

    def __init__(self, gate_up: nn.Module, down_proj: nn.Module):
        super().__init__()
        self.gate_up, self.down_proj = gate_up, down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate_up
        # one token: the epilogue (zipgen.runtime.gated takes it where the tuned kernel allows,
        # M = 1 on an H200); more: the GEMM, and the product where torch.compile can fuse it
        if isinstance(g, ZipLinear) and x.numel() == x.shape[-1]:
            return self.down_proj(ops.gemm_silu_mul_op(x, *g.streams(), g.out_features,
                                                       g.in_features, g.base, g.fused))
        both = g(x)
        half = both.shape[-1] // 2
        return self.down_proj(F.silu(both[..., :half]) * both[..., half:])


def stacked_gate_up(module: nn.Module) -> ZipLinear | None:
    """The stacked ZipLinear behind `module`'s gate_proj and up_proj, if they are its two
    halves in that order, without bias, and the module has a down_proj and a SiLU act_fn."""
    gate, up = getattr(module, "gate_proj", None), getattr(module, "up_proj", None)
    if not (isinstance(gate, SiblingSlice) and isinstance(up, SiblingSlice)
            and gate.fused_name == up.fused_name and hasattr(module, "down_proj")):
        return None
    stacked = getattr(module, gate.fused_name, None)
    if not isinstance(stacked, ZipLinear) or stacked.bias is not None:
        return None
    half = stacked.out_features // 2
    if (gate.start, gate.stop, up.start, up.stop) != (0, half, half, 2 * half):
        return None
    act = getattr(module, "act_fn", None)
    probe = torch.linspace(-12, 12, 4001).to(torch.bfloat16)
    if not callable(act) or not torch.equal(act(probe), F.silu(probe)):
        return None
    return stacked


def fuse_gated_mlps(model: nn.Module, *args, **kwargs) -> list[str]:
    """Replace every gated MLP of `model` (see the module's docstring) by a GatedMLP, confirmed
    on the input model(*args, **kwargs) gives it (a few token ids for a language model).
    Returns the names replaced. The names in the state dict change (gate_up, down_proj)."""
    candidates = {name: (m, stacked) for name, m in model.named_modules()
                  if name and (stacked := stacked_gate_up(m)) is not None}
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(_module, inputs, output):
            seen.setdefault(name, (inputs[0], output))
        return hook

    probe_run(model, [m.register_forward_hook(record(name))
                      for name, (m, _) in candidates.items()], *args, **kwargs)
    replaced = []
    for name, (module, stacked) in candidates.items():
        if name not in seen:
            continue
        fused = GatedMLP(stacked, module.down_proj)
        x, expected = seen[name]
        with torch.no_grad():
            if not torch.equal(fused(x), expected):
                continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, fused)
        replaced.append(name)
    return replaced

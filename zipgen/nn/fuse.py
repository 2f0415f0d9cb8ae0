"""Fusing sibling projections: the Linear layers of one parent that read the same input tensor
(an attention block's q / k / v, an MLP's gate / up) become one Linear with their weights
stacked, so that one GEMM reads them all.

Small projections leave most of a GPU idle (a 1024 x 4096 k_proj is 64 CTAs of ZipGEMM's 16 rows
on 132 SMs); stacked they stream at the rate of a large layer. Siblings are found by running
the model once with hooks, not by names: whichever Linear children of one parent receive the
very same input tensor object are fused, in any architecture. The parent's code is untouched:
each sibling becomes a SiblingSlice that returns its columns of the fused output, computed by
whichever sibling is called first and shared with the others of the same call. Whatever a
later call passes, a sibling checks that it is the very tensor the shared output was computed
from, so a grouping the probe run got wrong costs only speed.

Fusing BF16 layers before compress_model compresses each stack as one layer. Compressed
siblings (ZipLinear) are stacked by decoding them, stacking and compressing the stack: lossless,
so the fused layer's weights are the siblings' bit for bit. Fuse a BF16 baseline the same way
for a fair comparison. The fused names (parent.fused_q_proj_k_proj_v_proj) change the state
dict: fuse for serving, after loading.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputError
from ..format import compress
from .linear import ZipLinear


class SiblingSlice(nn.Module):
    """Stands in for one of the fused siblings: output columns start..stop of the parent's
    fused Linear (looked up by name at each call, so that it may be replaced after fusing, by
    compress_model for one).

    The siblings of a call share one GEMM: the first to be called with an input computes the
    fused output; the others, called with the same tensor object, slice it. Once each sibling
    has taken its slice the output is released, so the next call (a new step, or the same
    static buffer replayed into a CUDA graph capture) computes afresh; a sibling called twice
    with one input recomputes too. The slices are views of the fused output (their last
    dimension contiguous). An input rewritten in place between the siblings' calls (its
    version counter moved) is computed afresh too."""

    def __init__(self, parent: nn.Module, fused_name: str, group: "_SharedOutput", index: int,
                 start: int, stop: int, in_features: int):
        super().__init__()
        # plain attributes, not submodules: the parent owns the fused Linear once
        self._refs = (parent, group)
        self.fused_name, self.index = fused_name, index
        self.start, self.stop = start, stop
        self.in_features, self.out_features = in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parent, group = self._refs
        stale = group.input is not x or self.index in group.taken
        eager = not torch.compiler.is_compiling()  # a traced graph has no in-place surprises
        if not stale and eager:
            stale = x._version != group.version  # rewritten in place since
        if stale:
            group.input, group.version = x, x._version if eager else 0
            group.output, group.taken = getattr(parent, self.fused_name)(x), set()
        group.taken.add(self.index)
        out = group.output[..., self.start:self.stop]
        if len(group.taken) == group.size:
            group.input = group.output = None
        return out

    def extra_repr(self) -> str:
        return f"{self.fused_name}[..., {self.start}:{self.stop}]"


@dataclass
class _SharedOutput:
    size: int
    input: torch.Tensor | None = None
    version: int = 0  # input._version when output was computed
    output: torch.Tensor | None = None
    taken: set = field(default_factory=set)


@dataclass
class FusionReport:
    groups: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (parent, names)

    def summary(self) -> str:
        layers = sum(len(names) for _, names in self.groups)
        return f"{layers} Linear layers fused into {len(self.groups)}"


def probe_run(model: nn.Module, hooks, *args, **kwargs) -> None:
    """model(*args, **kwargs) once without gradients, for the hooks that watch it; the hooks
    (their handles) are removed afterwards, also when the run fails."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()


def find_siblings(model: nn.Module, *args, **kwargs) -> list[tuple[str, tuple[str, ...]]]:
    """Run model(*args, **kwargs) once (no grad) and return (parent name, child names) for each
    set of >= 2 nn.Linear or ZipLinear children of one parent that received the same input
    tensor object. A layer called with several different inputs in that run is left alone."""
    seen: dict[str, set[int]] = defaultdict(set)  # linear name -> id of each input it got
    by_input: dict[tuple[str, int], list[str]] = defaultdict(list)  # (parent, input id) -> kids
    alive = []  # every input seen, held so that no later tensor of the run reuses its id
    hooks = []
    for name, module in model.named_modules():
        if type(module) in (nn.Linear, ZipLinear) and "." in name:
            parent, _, child = name.rpartition(".")

            def hook(_module, inputs, name=name, parent=parent, child=child):
                alive.append(inputs[0])
                key = id(inputs[0])
                seen[name].add(key)
                if child not in by_input[parent, key]:
                    by_input[parent, key].append(child)

            hooks.append(module.register_forward_pre_hook(hook))
    try:
        probe_run(model, hooks, *args, **kwargs)
    finally:
        alive.clear()
    groups = []
    for (parent, _), kids in by_input.items():
        kids = [k for k in kids if len(seen[f"{parent}.{k}"]) == 1]
        if len(kids) >= 2:
            groups.append((parent, tuple(kids)))
    return groups


def fuse_siblings(model: nn.Module, *args, **kwargs) -> FusionReport:
    """Fuse the sibling Linear layers that find_siblings(model, *args, **kwargs) finds, in
    place; args / kwargs: one small input of the model's forward (a few token ids for a
    language model). Siblings stack when they are of one kind (nn.Linear or ZipLinear) and
    agree in input size, device, dtype and having a bias; each such subset of two or more
    becomes one layer of that kind."""
    report = FusionReport()
    for parent_name, siblings in find_siblings(model, *args, **kwargs):
        parent = model.get_submodule(parent_name)
        stackable = defaultdict(list)
        for name in siblings:
            layer = getattr(parent, name)
            stackable[type(layer), layer.in_features, _device(layer),
                      _dtype(layer), layer.bias is None].append(name)
        for names in stackable.values():
            if len(names) >= 2:
                _fuse(parent, parent_name, tuple(names))
                report.groups.append((parent_name, tuple(names)))
    return report


def _device(layer) -> torch.device:
    return layer.streams()[0].device if isinstance(layer, ZipLinear) else layer.weight.device


def _dtype(layer) -> torch.dtype:
    return torch.bfloat16 if isinstance(layer, ZipLinear) else layer.weight.dtype


def _stacked(layers: list, name: str) -> nn.Module:
    """One layer of the same kind whose output rows are the layers' in order."""
    first = layers[0]
    bias = None if first.bias is None else torch.cat([l.bias.detach() for l in layers])
    if isinstance(first, ZipLinear):  # decoded, stacked and compressed again: lossless
        weight = torch.cat([l.decompressed_weight() for l in layers])
        fused = ZipLinear.from_compressed(compress(weight, name=f"{name}.weight"), bias)
        fused.fused = first.fused
        return fused
    fused = nn.Linear(first.in_features, sum(l.out_features for l in layers),
                      bias=bias is not None, device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([l.weight for l in layers]))
        if bias is not None:
            fused.bias.copy_(bias)
    return fused.requires_grad_(first.weight.requires_grad)


def _fuse(parent: nn.Module, parent_name: str, names: tuple[str, ...]) -> None:
    """Stack parent's Linear children `names` into parent.fused_<names> and put a SiblingSlice
    in each one's place."""
    linears = [getattr(parent, n) for n in names]
    fused_name = "fused_" + "_".join(names)
    if hasattr(parent, fused_name):
        raise InputError(f"{parent_name}.{fused_name} exists already: fused twice?")
    parent.add_module(fused_name, _stacked(linears, f"{parent_name}.{fused_name}"))
    group, start = _SharedOutput(len(names)), 0
    for index, (name, linear) in enumerate(zip(names, linears)):
        stop = start + linear.out_features
        setattr(parent, name, SiblingSlice(parent, fused_name, group, index, start, stop,
                                           linear.in_features))
        start = stop

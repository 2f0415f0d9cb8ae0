"""Swapping nn.Linear for ZipLinear in any model, with no per-architecture rules.

* compress_model(model): compress the model's own BF16 Linear layers in place (in memory).
* load_compressed(model, folder): fill a model (typically built under empty_weights()) from a
  `zipgen compress` folder: every Linear whose `<module>.weight` is compressed there becomes a
  ZipLinear, every other tensor is loaded raw.
* decompress_model(model): the inverse of compress_model (a BF16 baseline, or to fine-tune).

Names are matched as in checkpoints: the globs of include/exclude apply to `<module>.weight`,
like `zipgen compress --include/--exclude`.
"""
from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoint.manifest import COMPRESSED, Manifest
from ..checkpoint.policy import DEFAULT_EXCLUDE, MIN_SIDE
from ..checkpoint.reader import iter_tensors
from ..errors import FormatError, InputError
from ..format import CompressedTensor, decompress
from ..report import human_bytes
from .linear import ZipLinear


@dataclass
class LayerReport:
    name: str  # module name
    shape: tuple[int, int]
    original_bytes: int  # BF16
    compressed_bytes: int
    coverage: float


@dataclass
class ModelReport:
    """What compress_model() did: the layers it compressed and the Linear layers it skipped."""
    layers: list[LayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # module name -> reason

    @property
    def original_bytes(self) -> int:
        return sum(r.original_bytes for r in self.layers)

    @property
    def compressed_bytes(self) -> int:
        return sum(r.compressed_bytes for r in self.layers)

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / max(self.original_bytes, 1)

    def summary(self) -> str:
        return (f"{len(self.layers)} Linear layers compressed: {human_bytes(self.original_bytes)}"
                f" -> {human_bytes(self.compressed_bytes)} ({100 * self.ratio:.1f}% of BF16, "
                f"{16 * self.ratio:.2f} bits/weight); {len(self.skipped)} skipped")


def _selected(name: str, include, exclude) -> bool:
    return (any(fnmatch.fnmatchcase(name, g) for g in include)
            and not any(fnmatch.fnmatchcase(name, g) for g in exclude))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has (tied weights have several)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def _skip_reason(name: str, linear: nn.Linear, aliases: list[str], min_side: int) -> str | None:
    w = linear.weight
    if w.device.type == "meta":
        return "weight is on the meta device (not loaded)"
    if w.dtype != torch.bfloat16 or (linear.bias is not None and linear.bias.dtype != torch.bfloat16):
        return f"{w.dtype}, not BF16 (TCA-TBE is lossless for BF16 only)"
    if min(w.shape) < min_side:
        return f"{w.shape[0]} x {w.shape[1]} is smaller than {min_side} on a side"
    others = [a for a in aliases if a != f"{name}.weight"]
    if others:  # e.g. lm_head tied to the embedding: both copies would stay
        return f"weight is shared with {', '.join(others)} (tied)"
    return None


def compress_model(model: nn.Module, include=("*",), exclude=DEFAULT_EXCLUDE, *,
                   min_side: int = MIN_SIDE) -> ModelReport:
    """Replace, in place, every nn.Linear with a BF16 weight of at least min_side on both sides
    whose `<name>.weight` the globs select by a ZipLinear (lossless); returns a report. Each
    layer is compressed on its own device and its BF16 weight is released as it goes."""
    report = ModelReport()
    shared = _shared_weights(model)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in linears:
        if not _selected(f"{name}.weight", include, exclude):
            report.skipped[name] = "excluded by the include/exclude globs"
            continue
        reason = _skip_reason(name, linear, shared.get(id(linear.weight), []), min_side)
        if reason:
            report.skipped[name] = reason
            continue
        zl = ZipLinear.from_linear(linear, name=name)
        zl.train(linear.training)
        _set_submodule(model, name, zl)
        ct = zl.compressed()
        report.layers.append(LayerReport(name, ct.shape, 2 * ct.numel, ct.nbytes, ct.coverage))
    return report


def decompress_model(model: nn.Module) -> int:
    """Replace every ZipLinear by an nn.Linear holding the decoded BF16 weight (bit-exact);
    returns how many were replaced."""
    zips = [(n, m) for n, m in model.named_modules() if isinstance(m, ZipLinear)]
    for name, zl in zips:
        w = zl.decompressed_weight()
        linear = nn.Linear(zl.in_features, zl.out_features, bias=zl.bias is not None,
                           device="meta", dtype=torch.bfloat16)
        linear.weight = nn.Parameter(w, requires_grad=False)
        if zl.bias is not None:
            linear.bias = nn.Parameter(zl.bias.detach(), requires_grad=False)
        linear.train(zl.training)
        _set_submodule(model, name, linear)
    return len(zips)


@contextlib.contextmanager
def empty_weights():
    """Inside this block new parameters live on the meta device: a model of any size is built
    at once, with no memory and no random init (like accelerate's init_empty_weights, in plain
    torch). Buffers are made normally: non-persistent ones (e.g. rotary inv_freq) are computed
    at construction and never stored in checkpoints."""
    original = nn.Module.register_parameter

    def register_parameter(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@dataclass
class LoadReport:
    compressed: list[str] = field(default_factory=list)  # modules now ZipLinear
    raw: list[str] = field(default_factory=list)  # tensors loaded as they are
    decoded: list[str] = field(default_factory=list)  # compressed tensors that are no Linear weight
    unexpected: list[str] = field(default_factory=list)  # in the folder, not in the model
    missing: list[str] = field(default_factory=list)  # in the model, still on meta


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> bool:
    """Put `tensor` in place of parameter/buffer `name` (cast to its dtype if floating);
    False when the model has no such tensor."""
    parent, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(parent) if parent else model
    except AttributeError:
        return False
    for table in (module._parameters, module._buffers):
        old = table.get(leaf)
        if old is None:
            continue
        if tuple(old.shape) != tuple(tensor.shape):
            raise InputError(f"{name}: the folder holds shape {tuple(tensor.shape)}, the model "
                             f"expects {tuple(old.shape)} (wrong config.json?)")
        if tensor.is_floating_point() and old.is_floating_point():
            tensor = tensor.to(old.dtype)
        grad = old.requires_grad and tensor.is_floating_point()  # integer tensors cannot
        table[leaf] = (nn.Parameter(tensor, requires_grad=grad)
                       if table is module._parameters else tensor)
        return True
    return False


def load_compressed(model: nn.Module, folder, device="cpu", *, strict: bool = True) -> LoadReport:
    """Load a `zipgen compress` folder into `model` (whose tensors may be on the meta device):
    Linear layers whose weight is compressed there become ZipLinear (bias loaded raw), all
    other tensors are loaded as they are, cast to the model's dtype if floating, onto `device`.
    Tied weights (shared parameters) stay tied. strict: raise if a model tensor stays unloaded
    or the folder holds a tensor the model lacks."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    report = LoadReport()
    modules = dict(model.named_modules())
    for name, entry in manifest.tensors.items():
        owner = name.removesuffix(".weight")
        linear = modules.get(owner)
        if entry.kind == COMPRESSED and name.endswith(".weight") and isinstance(linear, nn.Linear):
            if entry.shape != [linear.out_features, linear.in_features]:
                raise InputError(f"{name}: the folder holds shape {entry.shape}, the model expects "
                                 f"{[linear.out_features, linear.in_features]} (wrong config.json?)")
            _set_submodule(model, owner, ZipLinear(linear.in_features, linear.out_features,
                                                   bias=linear.bias is not None, device="meta"))
            report.compressed.append(owner)
    aliases = _shared_weights(model)
    alias_of = {n: names for names in aliases.values() for n in names}

    for name, entry, value in iter_tensors(folder, device):
        owner = name.removesuffix(".weight")
        if isinstance(value, CompressedTensor):
            zl = model.get_submodule(owner) if owner in report.compressed else None
            if zl is not None and name.endswith(".weight"):
                zl.set_compressed(value)
                continue
            value = decompress(value)  # compressed with a non-default policy, e.g. embeddings
            report.decoded.append(name)
        if not _assign(model, name, value):
            report.unexpected.append(name)
            continue
        report.raw.append(name)
        loaded = _get(model, name)
        for alias in alias_of.get(name, ()):  # keep ties: aliases still empty share it
            if alias != name and _is_meta(model, alias):
                _share(model, alias, loaded)

    report.missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                      if t.device.type == "meta"]
    if strict and (report.missing or report.unexpected):
        raise FormatError(f"{folder} does not fit the model: missing {report.missing[:5]}"
                          f"{' ...' if len(report.missing) > 5 else ''}, unexpected "
                          f"{report.unexpected[:5]}{' ...' if len(report.unexpected) > 5 else ''}")
    return report


def _get(model: nn.Module, name: str) -> torch.Tensor:
    parent, _, leaf = name.rpartition(".")
    module = model.get_submodule(parent) if parent else model
    return getattr(module, leaf)


def _is_meta(model: nn.Module, name: str) -> bool:
    try:
        t = _get(model, name)
    except AttributeError:
        return False
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def _share(model: nn.Module, name: str, param: torch.Tensor) -> None:
    parent, _, leaf = name.rpartition(".")
    module = model.get_submodule(parent) if parent else model
    if leaf in module._parameters:
        module._parameters[leaf] = param

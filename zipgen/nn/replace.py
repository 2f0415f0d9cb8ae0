"""Swapping nn.Linear for ZipLinear (and, on request, nn.Embedding for ZipEmbedding) in any
model, with no per-architecture rules.

* compress_model(model): compress the model's own BF16 Linear layers in place (in memory);
  embeddings=True also compresses its embedding tables.
* load_compressed(model, folder): fill a model (typically built under empty_weights()) from a
  `zipgen compress` folder: every Linear or Embedding whose `<module>.weight` is compressed there
  becomes a ZipLinear or ZipEmbedding, every other tensor is loaded raw.
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
from .embedding import ZipEmbedding
from .linear import ZipLinear


@dataclass
class LayerReport:
    name: str  # module name
    shape: tuple[int, int]
    original_bytes: int  # BF16
    compressed_bytes: int
    coverage: float
    kind: str = "Linear"  # or "embedding"


@dataclass
class ModelReport:
    """What compress_model() did: the layers it compressed and the layers it skipped."""
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
        tables = sum(r.kind == "embedding" for r in self.layers)
        what = (f"{len(self.layers)} Linear layers" if not tables else
                f"{len(self.layers)} layers ({len(self.layers) - tables} Linear, {tables} "
                f"embedding)")
        return (f"{what} compressed: {human_bytes(self.original_bytes)}"
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


def _skip_reason(name: str, module: nn.Module, aliases: list[str], min_side: int) -> str | None:
    w, bias = module.weight, getattr(module, "bias", None)
    if w.device.type == "meta":
        return "weight is on the meta device (not loaded)"
    if w.dtype != torch.bfloat16 or (bias is not None and bias.dtype != torch.bfloat16):
        return f"{w.dtype}, not BF16 (TCA-TBE is lossless for BF16 only)"
    if min(w.shape) < min_side:
        return f"{w.shape[0]} x {w.shape[1]} is smaller than {min_side} on a side"
    others = [a for a in aliases if a != f"{name}.weight"]
    if others:  # e.g. lm_head tied to the embedding: both copies would stay
        return f"weight is shared with {', '.join(others)} (tied)"
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return "max_norm renormalises the table at lookup time"
    return None


def compress_model(model: nn.Module, include=("*",), exclude=DEFAULT_EXCLUDE, *,
                   min_side: int = MIN_SIDE, embeddings: bool = False,
                   only=None) -> ModelReport:
    """Replace, in place, every nn.Linear with a BF16 weight of at least min_side on both sides
    whose `<name>.weight` the globs select by a ZipLinear (lossless); with embeddings=True also
    every such nn.Embedding by a ZipEmbedding (the default exclude globs, which keep embedding
    tables raw, then apply to Linear layers only; globs the caller adds apply to both). `only`:
    the module names to consider (default: all), e.g. the one layer just built. Returns a
    report. Each layer is compressed on its own device and its BF16 weight is released as it
    goes."""
    report = ModelReport()
    shared = _shared_weights(model)
    kinds = (nn.Linear, nn.Embedding) if embeddings else (nn.Linear,)
    table_exclude = tuple(g for g in exclude if g not in DEFAULT_EXCLUDE)  # the caller's own
    wanted = None if only is None else set(only)
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)
                         and (wanted is None or n in wanted)]:
        table = isinstance(module, nn.Embedding)
        if not _selected(f"{name}.weight", include, table_exclude if table else exclude):
            report.skipped[name] = "excluded by the include/exclude globs"
            continue
        reason = _skip_reason(name, module, shared.get(id(module.weight), []), min_side)
        if reason:
            report.skipped[name] = reason
            continue
        replacement = (ZipEmbedding.from_embedding(module, name=name) if table
                       else ZipLinear.from_linear(module, name=name))
        replacement.train(module.training)
        _set_submodule(model, name, replacement)
        ct = replacement.compressed()
        report.layers.append(LayerReport(name, ct.shape, 2 * ct.numel, ct.nbytes, ct.coverage,
                                         "embedding" if table else "Linear"))
    return report


def decompress_model(model: nn.Module) -> int:
    """Replace every ZipLinear / ZipEmbedding by an nn.Linear / nn.Embedding holding the
    decoded BF16 weight (bit-exact); returns how many were replaced."""
    zips = [(n, m) for n, m in model.named_modules() if isinstance(m, (ZipLinear, ZipEmbedding))]
    for name, zm in zips:
        w = nn.Parameter(zm.decompressed_weight(), requires_grad=False)
        if isinstance(zm, ZipEmbedding):
            plain = nn.Embedding(zm.num_embeddings, zm.embedding_dim, zm.padding_idx,
                                 _weight=w, _freeze=True)
        else:
            plain = nn.Linear(zm.in_features, zm.out_features, bias=zm.bias is not None,
                              device="meta", dtype=torch.bfloat16)
            plain.weight = w
            if zm.bias is not None:
                plain.bias = nn.Parameter(zm.bias.detach(), requires_grad=False)
        plain.train(zm.training)
        _set_submodule(model, name, plain)
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
    compressed: list[str] = field(default_factory=list)  # modules now ZipLinear / ZipEmbedding
    raw: list[str] = field(default_factory=list)  # tensors loaded as they are
    decoded: list[str] = field(default_factory=list)  # compressed, but no Linear/Embedding weight
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
    Linear layers whose weight is compressed there become ZipLinear (bias loaded raw), embedding
    tables compressed there (`zipgen compress --compress-embeddings`) ZipEmbedding; all other
    tensors are loaded as they are, cast to the model's dtype if floating, onto `device`.
    Tied weights (shared parameters) stay tied. strict: raise if a model tensor stays unloaded
    or the folder holds a tensor the model lacks."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    report = LoadReport()
    modules = dict(model.named_modules())
    for name, entry in manifest.tensors.items():
        owner = name.removesuffix(".weight")
        module = modules.get(owner)
        if not (entry.kind == COMPRESSED and name.endswith(".weight")
                and isinstance(module, (nn.Linear, nn.Embedding))):
            continue
        expected = list(module.weight.shape)
        if entry.shape != expected:
            raise InputError(f"{name}: the folder holds shape {entry.shape}, the model expects "
                             f"{expected} (wrong config.json?)")
        if isinstance(module, nn.Linear):
            skeleton = ZipLinear(module.in_features, module.out_features,
                                 bias=module.bias is not None, device="meta")
        else:
            skeleton = ZipEmbedding(module.num_embeddings, module.embedding_dim,
                                    module.padding_idx, device="meta")
        _set_submodule(model, owner, skeleton)
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

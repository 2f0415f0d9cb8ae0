"""Hugging Face transformers: load a `zipgen compress` folder as a ready model.

    import zipgen.integrations.hf as zhf
    model = zhf.from_pretrained("llama-3.1-8b.zg", device="cuda")   # a transformers model
    print(zhf.weight_memory(model))

The folder is what `zipgen compress` writes from a Hugging Face model folder: safetensors shards,
zipgen.json and the copied config.json / tokenizer / generation_config.json. The model is built
from config.json with its parameters on the meta device (no memory, no random init), every
Linear layer (and embedding table) whose weight is compressed becomes a ZipLinear (ZipEmbedding), and every tensor is loaded straight
onto `device`. Nothing depends on the architecture: Llama, Qwen2, Mistral and other models whose
checkpoint names match their module names load the same way.

There is no transformers quantizer (`quant_method: "zipserv"` for AutoModel.from_pretrained)
on purpose: a `zipgen compress` folder has no model.safetensors(.index.json) for transformers
to find, its streams are stored under `<name>.zg.*` with shape and base in zipgen.json, and the
HfQuantizer hooks for loading such tensors changed between transformers 5.17 and 5.24
(serialized_names / get_load_operations are new), so the quantizer would be tied to one minor
version. This loader uses only from_config and plain module surgery.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint.manifest import Manifest
from ..errors import InputError
from ..nn.compressed import CompressedWeight
from ..nn.fuse import fuse_siblings as stack_siblings
from ..nn.gated import fuse_gated_mlps
from ..nn.replace import empty_weights, load_compressed
from ..report import human_bytes


def _model_class(config):
    """The class config.json names (e.g. LlamaForCausalLM), else AutoModelForCausalLM's."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM._model_mapping[type(config)]


def from_pretrained(folder, device="cuda", dtype=torch.bfloat16, fuse_siblings: bool = False,
                    **kwargs):
    """A transformers model from a `zipgen compress` folder, on `device`, in eval mode.

    dtype: must be torch.bfloat16 (the model's activations reach the BF16-only ZipLinear).
    fuse_siblings: stack the projections that read one input (q / k / v, gate / up) into one
    layer each after loading (zipgen.nn.fuse_siblings; losslessly re-compressed), so that one
    GEMM reads them; it changes the module names, so the model's state dict too. Gated MLPs
    (SiLU) then take their activation in the stacked GEMM's epilogue (fuse_gated).
    kwargs go to the model's constructor (`_from_config`), e.g. attn_implementation="sdpa".
    Compressed layers run torch.ops.zipgen.gemm: ZipGEMM on a GPU, the reference decoder +
    F.linear on the CPU (exact, slow)."""
    import transformers

    if dtype != torch.bfloat16:  # activations flow in this dtype, and ZipLinear takes BF16
        raise InputError(f"dtype {dtype}: compressed layers compute in BF16; load with "
                         f"dtype=torch.bfloat16")
    folder = Path(folder)
    Manifest.read(folder)  # a clear error for a folder zipgen did not write
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: no config.json (compress a Hugging Face model folder, "
                         f"whose non-weight files `zipgen compress` copies)")
    config = transformers.AutoConfig.from_pretrained(folder)
    with empty_weights():
        model = _model_class(config)._from_config(config, dtype=dtype, **kwargs)
    load_compressed(model, folder, device=device)
    model.to(device)  # buffers made at construction (rotary inv_freq) are on the CPU
    model.eval()
    if (folder / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    if fuse_siblings:
        fuse_projections(model)
        fuse_gated(model)
    return model


def fuse_projections(model):
    """zipgen.nn.fuse_siblings for a transformers model (q / k / v and gate / up stacked),
    probed with two token ids; returns its FusionReport."""
    return stack_siblings(model, torch.zeros(1, 2, dtype=torch.long, device=model.device))


def fuse_gated(model) -> list[str]:
    """zipgen.nn.fuse_gated_mlps for a transformers model whose gate / up projections were
    stacked and compressed, probed with two token ids; returns the MLPs replaced."""
    return fuse_gated_mlps(model, torch.zeros(1, 2, dtype=torch.long, device=model.device))


@dataclass(frozen=True)
class WeightMemory:
    compressed: int  # bytes of the ZipLinear / ZipEmbedding streams
    raw: int  # bytes of every other parameter and buffer (biases, norms, embeddings, ...)
    compressed_as_bf16: int  # what the compressed weights take in BF16

    @property
    def total(self) -> int:
        return self.compressed + self.raw

    @property
    def total_as_bf16(self) -> int:
        """The model's weight memory if nothing were compressed."""
        return self.compressed_as_bf16 + self.raw

    @property
    def ratio(self) -> float:
        """Compressed layers over their BF16 size."""
        return self.compressed / max(self.compressed_as_bf16, 1)

    def __str__(self) -> str:
        return (f"weights {human_bytes(self.total)} ({100 * self.total / max(self.total_as_bf16, 1):.1f}% "
                f"of BF16 {human_bytes(self.total_as_bf16)}): compressed layers "
                f"{human_bytes(self.compressed)} ({100 * self.ratio:.1f}% of "
                f"{human_bytes(self.compressed_as_bf16)}), raw {human_bytes(self.raw)}")


def weight_memory(model: torch.nn.Module) -> WeightMemory:
    """Bytes of the model's parameters and buffers, compressed layers (with their indexes)
    apart. Tied (shared) tensors count once."""
    layers = [m for m in model.modules() if isinstance(m, CompressedWeight)]
    zips = {id(t) for m in layers for t in m.streams()}
    compressed = raw = 0
    for t in list(model.parameters()) + list(model.buffers()):  # both deduplicate shared tensors
        size = t.numel() * t.element_size()
        if id(t) in zips:
            compressed += size
        else:
            raw += size
    compressed += sum(m.index_bytes for m in layers)  # e.g. ZipEmbedding's lookup index
    as_bf16 = sum(2 * m.weight_shape[0] * m.weight_shape[1] for m in layers)
    return WeightMemory(compressed, raw, as_bf16)

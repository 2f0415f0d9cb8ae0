"""ZipEmbedding: a drop-in nn.Embedding (inference) whose BF16 table is stored compressed.

forward() decodes only the looked-up rows, with no host synchronisation, so a decode step that
looks up its tokens can be captured in a CUDA graph, through the custom op
`torch.ops.zipgen.decode_rows` (opaque to torch.compile):
* on a GPU, the generated row decoder (templates/rows.cu.j2): one launch per lookup;
* elsewhere, zipgen.format.rows.decode_rows: a fixed sequence of gathers, which finds the rows'
  fallback entries through a sorted index of them (entry_keys: 4 bytes per fallback, built at
  the first lookup after the table is set or moved).
A Llama-3.1-8B embedding table (128256 x 4096, 1 GB in BF16) takes about 0.74 GB this way.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..format import CompressedTensor, compress, decompress
from ..format.rows import entry_keys
from . import ops
from .compressed import CompressedWeight


class ZipEmbedding(CompressedWeight):
    """Rows of a compressed [num_embeddings, embedding_dim] table. Build with from_embedding()
    or from_compressed(); the constructor makes an empty skeleton for load_state_dict()."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 device=None, dtype=None):
        if dtype not in (None, torch.bfloat16):
            raise InputError(f"ZipEmbedding holds BF16 tables only, not {dtype}")
        super().__init__(num_embeddings, embedding_dim, device=device)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx  # kept for repr and round trips; inference only
        self._keys, self._keys_of = None, None  # entry_keys() and the streams it was built from

    @classmethod
    def from_compressed(cls, ct: CompressedTensor, padding_idx: int | None = None) -> "ZipEmbedding":
        """Wrap a CompressedTensor without copying it."""
        if not isinstance(ct, CompressedTensor):
            raise InputError(f"expected a CompressedTensor, got {type(ct).__name__}")
        module = cls(*ct.shape, padding_idx=padding_idx, device="meta")
        module.set_compressed(ct)
        return module

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, name: str = "embedding") -> "ZipEmbedding":
        """Compress a BF16 nn.Embedding (lossless), on the table's device. Options that change
        the lookup itself (max_norm renormalises rows in place) are refused."""
        if not isinstance(embedding, nn.Embedding):
            raise InputError(f"{name}: expected an nn.Embedding, got {type(embedding).__name__}")
        if embedding.max_norm is not None:
            raise InputError(f"{name}: max_norm rewrites the table at lookup time; a compressed "
                             f"table cannot be renormalised")
        w = embedding.weight
        if w.dtype != torch.bfloat16:
            raise InputError(f"{name}: the table is {w.dtype}; ZipEmbedding compresses BF16 "
                             f"tables only (cast the model to BF16 first if that is acceptable)")
        return cls.from_compressed(compress(w.detach(), name=f"{name}.weight"),
                                   embedding.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """BF16 [*ids.shape, embedding_dim], bit for bit the rows of the original table."""
        if not isinstance(ids, torch.Tensor):
            raise InputError(f"indices must be a tensor, got {type(ids).__name__}")
        # CUDA: the row decoder kernel, which needs no index; elsewhere the gathers with one
        cuda = self._buffers["sign_mantissa"].device.type == "cuda"
        keys = None if cuda else self._entry_keys(self.compressed_unchecked())
        return ops.decode_rows_op(ids, *self.streams(), self.num_embeddings, self.embedding_dim,
                                  self.base, keys)

    def _entry_keys(self, ct: CompressedTensor) -> torch.Tensor:
        """The lookup index of the current streams (off the GPU only); rebuilt when a load or
        a move replaced them (they are compared by identity)."""
        streams = (ct.fallback_entries, ct.fallback_offsets)
        if self._keys_of is None or any(a is not b for a, b in zip(streams, self._keys_of)):
            self._keys, self._keys_of = entry_keys(ct), streams
        return self._keys

    @property
    def index_bytes(self) -> int:
        """The lookup index, once built."""
        return self._keys.numel() * self._keys.element_size() if self._keys is not None else 0

    def decompressed_weight(self) -> torch.Tensor:
        """The original BF16 table, decoded whole."""
        return decompress(self.compressed())

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}{pad}, "
                f"bits_per_weight={self.bits_per_weight:.2f}")

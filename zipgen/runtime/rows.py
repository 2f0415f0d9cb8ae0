"""The GPU row decoder: chosen rows of a CompressedTensor on a CUDA device -> BF16 rows, bit-exact
(an embedding lookup), in one launch with no host synchronisation (CUDA-graph capturable)."""
from __future__ import annotations

import torch

from ..codegen import RowsConfig
from ..errors import InputError
from ..format import CompressedTensor
from ..format.layout import COLS_PER_STRIP, padded_shape
from ..format.rows import check_indices
from .decode import check_stream_alignment
from .kernels import get_kernel, launch


def decode_rows_cuda(ct: CompressedTensor, ids: torch.Tensor,
                     config: RowsConfig | None = None) -> torch.Tensor:
    """BF16 [*ids.shape, K]: rows `ids` of `ct` (any order, repeats allowed), bit for bit as
    decompress() gives them, on torch's current stream. Like F.embedding on a GPU, indices are
    checked on the device: one outside 0 .. N-1 stops the kernel with a device error."""
    if not isinstance(ct, CompressedTensor):
        raise InputError(f"expected a CompressedTensor, got {type(ct).__name__}")
    if ct.device.type != "cuda":
        raise InputError(f"decode_rows_cuda needs a CompressedTensor on a CUDA device, not "
                         f"{ct.device}")
    check_indices(ids, ct.device)
    n, k = ct.shape
    flat = ids.reshape(-1).to(torch.int64).contiguous()  # no copy when already int64 and dense
    out = torch.empty((flat.numel(), k), dtype=torch.bfloat16, device=ct.device)
    if flat.numel():
        check_stream_alignment(ct)
        cfg = config or RowsConfig()
        strips_per_row = padded_shape(n, k)[1] // COLS_PER_STRIP
        launch(get_kernel("rows", cfg, ct.device), grid=cfg.grid(flat.numel(), strips_per_row),
               block=(cfg.threads,),
               args=(ct.sign_mantissa, ct.planes, ct.fallback_entries, ct.fallback_offsets, flat,
                     out, n, k, strips_per_row, ct.base),
               device=ct.device)
    return out.view(*ids.shape, k)

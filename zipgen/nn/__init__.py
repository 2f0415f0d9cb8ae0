"""zipgen.nn: compressed layers for PyTorch models.

ZipLinear is a drop-in nn.Linear with a TCA-TBE weight, ZipEmbedding a drop-in nn.Embedding
(inference) with a TCA-TBE table; compress_model / load_compressed swap them into any model;
torch.ops.zipgen.gemm / .decompress are the custom ops behind ZipLinear."""
from .embedding import ZipEmbedding
from .linear import ZipLinear
from .ops import AUTO, DECODE, FUSED, gemm
from .replace import (LayerReport, LoadReport, ModelReport, compress_model, decompress_model,
                      empty_weights, load_compressed)

__all__ = ["AUTO", "DECODE", "FUSED", "LayerReport", "LoadReport", "ModelReport", "ZipEmbedding",
           "ZipLinear", "compress_model", "decompress_model", "empty_weights", "gemm",
           "load_compressed"]

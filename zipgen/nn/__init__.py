"""zipgen.nn: compressed layers for PyTorch models.

ZipLinear is a drop-in nn.Linear with a TCA-TBE weight, ZipEmbedding a drop-in nn.Embedding
(inference) with a TCA-TBE table; compress_model / load_compressed swap them into any model;
torch.ops.zipgen.gemm / .decompress are the custom ops behind ZipLinear; fuse_siblings stacks
the projections that read one input (q / k / v, gate / up) into one Linear, and fuse_gated_mlps
then moves a gated MLP's SiLU-and-product into the stacked GEMM (torch.ops.zipgen.gemm_silu_mul)."""
from .embedding import ZipEmbedding
from .fuse import FusionReport, SiblingSlice, find_siblings, fuse_siblings
from .gated import GatedMLP, fuse_gated_mlps
from .linear import ZipLinear
from .ops import AUTO, DECODE, FUSED, gemm
from .replace import (LayerReport, LoadReport, ModelReport, compress_model, decompress_model,
                      empty_weights, load_compressed)

__all__ = ["AUTO", "DECODE", "FUSED", "FusionReport", "GatedMLP", "LayerReport", "LoadReport", "ModelReport",
           "SiblingSlice", "ZipEmbedding", "ZipLinear", "compress_model", "decompress_model",
           "empty_weights", "find_siblings", "fuse_gated_mlps", "fuse_siblings", "gemm", "load_compressed"]

"""zipgen: lossless BF16 weight compression (TCA-TBE) and fused GPU kernels that read it."""
__version__ = "0.1.0"

from .errors import ChecksumError, FormatError, InputError, ZipgenError
from .format import FORMAT_VERSION, CompressedTensor, compress, decompress

__all__ = ["FORMAT_VERSION", "ChecksumError", "CompressedTensor", "FormatError", "InputError",
           "ZipgenError", "__version__", "compress", "decompress", "load"]


def load(path, device="cpu"):
    """Load a folder written by `zipgen compress`: {name: CompressedTensor or torch.Tensor}."""
    from .checkpoint.reader import load as _load
    return _load(path, device=device)

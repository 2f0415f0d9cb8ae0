"""TCA-TBE format version 3: layout, window choice, codec and the CompressedTensor container."""
from .codec import compress, decompress, decompress_reference
from .tensor import FORMAT_VERSION, CompressedTensor
from .window import Window, best_window, exponent_entropy, exponent_histogram

__all__ = ["FORMAT_VERSION", "CompressedTensor", "Window", "best_window", "compress",
           "decompress", "decompress_reference", "exponent_entropy", "exponent_histogram"]

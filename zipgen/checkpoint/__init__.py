"""Compressed checkpoint folders: `zipgen compress / verify / info` and zipgen.load()."""
from .manifest import MANIFEST_NAME, Manifest, TensorEntry
from .policy import DEFAULT_EXCLUDE, Policy
from .reader import iter_tensors, load
from .verify import VerifyReport, verify_checkpoint
from .writer import CompressReport, compress_checkpoint

__all__ = ["DEFAULT_EXCLUDE", "MANIFEST_NAME", "CompressReport", "Manifest", "Policy",
           "TensorEntry", "VerifyReport", "compress_checkpoint", "iter_tensors", "load",
           "verify_checkpoint"]

"""Exceptions zipgen raises. Each names what was wrong and, where it helps, what to do."""


class ZipgenError(Exception):
    """Base class of every error zipgen raises on purpose."""


class FormatError(ZipgenError):
    """A tensor or file does not follow docs/FORMAT.md (wrong version, bad sizes, corrupt data)."""


class ChecksumError(FormatError):
    """Decoded data differs from the checksum recorded when it was compressed."""


class InputError(ZipgenError, ValueError):
    """An argument the caller passed cannot be compressed or used (dtype, shape, device...)."""


class CompileError(ZipgenError):
    """NVRTC could not compile a kernel. The message holds NVRTC's log and where the failing source
    was saved; `log` and `source_path` hold the same for code that wants them."""

    def __init__(self, message, *, log="", source_path=None):
        super().__init__(message)
        self.log = log
        self.source_path = source_path


class BundleError(ZipgenError):
    """A prebuilt kernel bundle is malformed, corrupt, or made for another zipgen or format version.
    The message names the bundle, the kernel and what does not match."""


class MissingKernelError(ZipgenError):
    """A kernel is in no bundle or cache and ZIPGEN_DISABLE_JIT=1 forbids compiling it (FlashInfer's
    MissingJITCacheError). The message names the kernel and the command that builds it."""

    def __init__(self, message, *, op=None, arch=None, config=None, kernel_name=None):
        super().__init__(message)
        self.op, self.arch, self.config, self.kernel_name = op, arch, config, kernel_name

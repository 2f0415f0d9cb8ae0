"""Where zipgen keeps compiled kernels and the files that help debug them."""
import os
from pathlib import Path


def cache_root() -> Path:
    """$ZIPGEN_CACHE_DIR if set, else ~/.cache/zipgen.

    Read on every call (not at import) so a test or a user can redirect it at any time.
    """
    env = os.environ.get("ZIPGEN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zipgen"


def bundled_headers_dir(nvrtc_version: tuple[int, int]) -> Path:
    """Where NVRTC unpacks the CUDA headers it was built with; one folder per NVRTC version,
    so two installs that share a cache never fight over which headers are there."""
    major, minor = nvrtc_version
    return cache_root() / "nvrtc-headers" / f"{major}.{minor}"


def failed_sources_dir() -> Path:
    """Where the source of a kernel that failed to compile is saved, for the user to open."""
    return cache_root() / "failed"

"""Prebuilt kernel bundles: build (NVRTC, no GPU), verify, and the runtime's kernel lookup
(bundle dir -> installed bundle -> cubin cache -> NVRTC, or MissingKernelError without JIT)."""
from .build import BuildResult, build_bundle
from .loader import ENV_BUNDLE_DIR, ENV_DISABLE_JIT, ResolvedKernel, resolve_kernel
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, KernelEntry, Manifest, read_manifest
from .verify import verify_bundle

__all__ = ["ENV_BUNDLE_DIR", "ENV_DISABLE_JIT", "MANIFEST_NAME", "SCHEMA_VERSION", "BuildResult",
           "KernelEntry", "Manifest", "ResolvedKernel", "build_bundle", "read_manifest",
           "resolve_kernel", "verify_bundle"]

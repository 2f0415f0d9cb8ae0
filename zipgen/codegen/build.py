"""Render + compile (through the cubin cache) in one call."""
from __future__ import annotations

from dataclasses import dataclass

from ..compile import CubinEntry, get_or_compile
from .render import RenderedKernel, include_dir, render

# -lineinfo costs nothing at run time and lets ncu map stalls to source lines.
_OPTIONS = ("-lineinfo",)


def compile_options() -> tuple[str, ...]:
    return _OPTIONS


@dataclass(frozen=True)
class BuiltKernel:
    rendered: RenderedKernel
    entry: CubinEntry

    @property
    def cubin(self) -> bytes:
        return self.entry.cubin

    @property
    def kernel_name(self) -> str:
        return self.rendered.kernel_name


def build_kernel(op: str, arch: str, config=None) -> BuiltKernel:
    """The cubin of one kernel, compiled with NVRTC or taken from the cache."""
    rendered = render(op, arch, config)  # its arch: sm_90a for wgmma configurations
    entry = get_or_compile(rendered.source, rendered.arch, op, rendered.config.as_dict(),
                           options=_OPTIONS, include_dirs=(include_dir(),))
    return BuiltKernel(rendered, entry)

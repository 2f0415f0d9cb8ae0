"""Kernel generation: arch traits, validated configurations and Jinja rendering."""
from .arch import (ARCHES, DEFAULT_ARCHES, ArchTraits, arch_for_capability, arch_traits,
                   compile_arch)
from .build import build_kernel, compile_options
from .configs import OPS, DecodeConfig, RowsConfig, ZipGemmConfig, default_config
from .render import RenderedKernel, include_dir, render, template_dir

__all__ = ["ARCHES", "DEFAULT_ARCHES", "OPS", "ArchTraits", "DecodeConfig", "RenderedKernel", "RowsConfig",
           "ZipGemmConfig",
           "arch_for_capability", "arch_traits", "compile_arch", "build_kernel", "compile_options",
           "default_config", "include_dir", "render", "template_dir"]

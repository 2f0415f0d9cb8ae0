"""Jinja templates and CUDA headers of zipgen's kernels, installed as zipgen.templates."""

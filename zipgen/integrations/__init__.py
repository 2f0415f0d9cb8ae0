"""Integrations with other libraries. Each submodule imports its library only when used:
zipgen.integrations.hf (Hugging Face transformers)."""

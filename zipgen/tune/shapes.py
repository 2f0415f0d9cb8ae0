"""Weight shapes (N x K) of the linear layers the tuner knows by model name."""
from __future__ import annotations

import re

from ..errors import InputError

# name -> [(layer, N, K)]; qkv and gate_up are the fused projections serving engines use.
MODELS: dict[str, list[tuple[str, int, int]]] = {
    "llama-3.1-8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096),
                     ("down", 4096, 14336)],
    "llama-3.1-70b": [("qkv", 10240, 8192), ("o", 8192, 8192), ("gate_up", 57344, 8192),
                      ("down", 8192, 28672)],
    "qwen2.5-7b": [("qkv", 4608, 3584), ("o", 3584, 3584), ("gate_up", 37888, 3584),
                   ("down", 3584, 18944)],
    # hidden 4096, 8 KV heads of 128, intermediate 14336: Llama-3.1-8B's shapes exactly
    "mistral-7b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096),
                   ("down", 4096, 14336)],
}


def parse_shape(text: str) -> tuple[int, int]:
    """"4096x4096" -> (4096, 4096)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or 0 in (n := int(match[1]), k := int(match[2])):
        raise InputError(f"bad shape {text!r}: write N x K as two positive integers, e.g. 4096x4096")
    return n, k


def shapes_for(models=(), shapes=()) -> list[tuple[str, int, int]]:
    """(label, N, K) for the named models' layers and the explicit NxK shapes, each shape once."""
    out: dict[tuple[int, int], str] = {}
    for model in models:
        if model not in MODELS:
            raise InputError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        for layer, n, k in MODELS[model]:
            out.setdefault((n, k), f"{model} {layer}")
    for text in shapes:
        n, k = parse_shape(text)
        out.setdefault((n, k), f"{n}x{k}")
    return [(label, n, k) for (n, k), label in out.items()]

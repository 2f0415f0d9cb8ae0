"""Format version 2 read by upgrading (docs/FORMAT.md, "Earlier versions"): its bit-plane code
words are repacked as version 3's as checkpoints and state dicts load, losslessly."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zipgen
from zipgen.cli.main import main
from zipgen.format.codec import _unpack_codes
from zipgen.format.upgrade import code_words_from_v2
from zipgen.nn import ZipLinear

from conftest import assert_bit_exact
from test_checkpoint_cli import bf16_sharded, compressed  # noqa: F401 (fixtures)
from test_nn import bf16_linear


def v2_planes(codes: torch.Tensor) -> torch.Tensor:
    """Version 2's packing (FORMAT.md): codes uint8 [S, 32 lanes, 32 positions] -> int32
    [S, 3, 32] with bit b of word p = bit p of the code at position b."""
    c = codes.to(torch.int64)
    weights = torch.ones(32, dtype=torch.int64) << torch.arange(32)
    planes = torch.stack([(((c >> p) & 1) * weights).sum(-1) for p in range(3)], dim=1)
    return (planes - ((planes >> 31) << 32)).to(torch.int32)  # two's complement, as stored


def test_v2_code_words_upgrade_to_the_same_codes():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 8, (40, 32, 32), dtype=torch.uint8, generator=g)
    upgraded = code_words_from_v2(v2_planes(codes))
    assert torch.equal(_unpack_codes(upgraded).view(40, 32, 32), codes)


def _downgrade(folder: Path) -> None:
    """Rewrite a version-3 checkpoint folder as version 2 wrote it."""
    manifest = json.loads((folder / "zipgen.json").read_text())
    for file in manifest["files"]:
        tensors = load_file(folder / file)
        for name, t in tensors.items():
            if name.endswith(".zg.planes"):
                tensors[name] = v2_planes(_unpack_codes(t).view(-1, 32, 32))
        save_file(tensors, str(folder / file))
        manifest["files"][file] = (folder / file).stat().st_size
    manifest["format_version"] = 2
    (folder / "zipgen.json").write_text(json.dumps(manifest))


def test_a_version_2_checkpoint_loads_upgraded_and_verifies(compressed, tmp_path):  # noqa: F811
    old = shutil.copytree(compressed, tmp_path / "v2")
    _downgrade(old)
    now, before = zipgen.load(compressed), zipgen.load(old)
    assert now.keys() == before.keys()
    for name, value in now.items():
        if isinstance(value, zipgen.CompressedTensor):
            assert before[name].format_version == zipgen.FORMAT_VERSION
            assert torch.equal(before[name].planes, value.planes), name
            assert_bit_exact(zipgen.decompress(before[name]), zipgen.decompress(value))
    assert main(["verify", str(old)]) == 0  # checksums are of the decoded weights


def test_a_version_2_state_dict_loads_upgraded():
    lin = bf16_linear(200, 96, seed=3)
    state = ZipLinear.from_linear(lin).state_dict()
    state["planes"] = v2_planes(_unpack_codes(state["planes"]).view(-1, 32, 32))
    state["_extra_state"] = state["_extra_state"].clone()
    state["_extra_state"][0] = 2
    fresh = ZipLinear(200, 96)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.decompressed_weight(), lin.weight.detach())


def test_other_versions_are_refused():
    lin = bf16_linear(64, 64, seed=1)
    state = ZipLinear.from_linear(lin).state_dict()
    state["_extra_state"] = state["_extra_state"].clone()
    state["_extra_state"][0] = 1
    with pytest.raises(zipgen.FormatError, match="format version 1 is not supported"):
        ZipLinear(64, 64).load_state_dict(state)

"""`zipgen compress / verify / info / example` on real (MiniLM) checkpoints, good and bad."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zipgen
from zipgen.checkpoint import Policy, compress_checkpoint, verify_checkpoint
from zipgen.cli.main import main

from conftest import assert_bit_exact


@pytest.fixture(scope="module")
def bf16_sharded(minilm_dir, tmp_path_factory) -> Path:
    """MiniLM cast to BF16 and split into two shards with an index, like a HF model folder."""
    folder = tmp_path_factory.mktemp("minilm-bf16")
    tensors = {n: t.to(torch.bfloat16) if t.is_floating_point() else t
               for n, t in load_file(minilm_dir / "model.safetensors").items()}
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k].contiguous() for k in keys}, str(folder / file))
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text((minilm_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not copied")
    return folder


@pytest.fixture(scope="module")
def compressed(bf16_sharded, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("out") / "minilm.zg"
    assert main(["compress", str(bf16_sharded), str(dst), "--quiet"]) == 0
    return dst


def test_compress_cli_on_fp32_minilm(minilm_dir, tmp_path, capsys):
    dst = tmp_path / "zg"
    assert main(["compress", str(minilm_dir), str(dst), "--cast-bf16"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.0.attention.self.query.weight" in out and "lossy" in out
    assert (dst / "zipgen.json").is_file() and (dst / "tokenizer.json").is_file()
    assert (dst / "1_Pooling" / "config.json").is_file()  # sub-folders are copied too
    assert main(["verify", str(dst), "--against", str(minilm_dir)]) == 0


def test_fp32_refused_without_cast(minilm_dir, tmp_path, capsys):
    dst = tmp_path / "zg"
    assert main(["compress", str(minilm_dir), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "--cast-bf16" in err and "F32" in err and "encoder." in err
    assert not dst.exists()


def test_layout_of_output(compressed, bf16_sharded):
    manifest = json.loads((compressed / "zipgen.json").read_text())
    assert manifest["format_version"] == 3
    tensors = manifest["tensors"]
    q = tensors["encoder.layer.0.attention.self.query.weight"]
    assert q["kind"] == "tca-tbe" and q["shape"] == [384, 384] and len(q["sha256"]) == 64
    assert tensors["embeddings.word_embeddings.weight"]["kind"] == "raw"  # embeddings raw
    assert tensors["encoder.layer.0.attention.self.query.bias"]["kind"] == "raw"  # 1-D
    assert (compressed / "config.json").is_file()
    assert not (compressed / "pytorch_model.bin").exists()  # other weight formats skipped
    assert not (compressed / "model.safetensors.index.json").exists()


def test_load_returns_compressed_and_raw(compressed, bf16_sharded):
    loaded = zipgen.load(compressed)
    originals = {}
    for f in bf16_sharded.glob("*.safetensors"):
        originals.update(load_file(f))
    assert set(loaded) == set(originals)
    for name, value in loaded.items():
        if isinstance(value, zipgen.CompressedTensor):
            assert_bit_exact(zipgen.decompress(value), originals[name])
        else:
            assert torch.equal(value.view(torch.uint8), originals[name].view(torch.uint8))
    assert sum(isinstance(v, zipgen.CompressedTensor) for v in loaded.values()) == 37


def test_verify_and_info(compressed, bf16_sharded, capsys):
    assert main(["verify", str(compressed), "--against", str(bf16_sharded)]) == 0
    assert "0 failures" in capsys.readouterr().out
    assert main(["info", str(compressed), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "format version 3" in out and "bits/weight" in out and "pooler.dense.weight" in out


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def _data_offset(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_corrupted_byte_is_caught(compressed, tmp_path, capsys):
    bad = _copy(compressed, tmp_path / "bad")
    shard = next(bad.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    # flip one byte in every 4 KB of the tensor data: some hit sign-mantissa bytes
    for pos in range(_data_offset(shard) + 100, len(data), 4096):
        data[pos] ^= 0x10
    shard.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and ("checksum" in out or "corrupt" in out)


def test_truncated_file_is_reported(compressed, tmp_path, capsys):
    bad = _copy(compressed, tmp_path / "trunc")
    shard = next(bad.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-1000])
    assert main(["verify", str(bad)]) == 2
    assert "truncated" in capsys.readouterr().err
    with pytest.raises(zipgen.FormatError, match="truncated"):
        zipgen.load(bad)


def test_corrupt_header_is_reported(compressed, tmp_path):
    bad = _copy(compressed, tmp_path / "hdr")
    shard = next(bad.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[10:20] = b"\x00" * 10
    shard.write_bytes(bytes(data))
    with pytest.raises(zipgen.FormatError, match="cannot read"):
        zipgen.load(bad)


def test_unknown_format_version(compressed, tmp_path, capsys):
    bad = _copy(compressed, tmp_path / "v99")
    m = json.loads((bad / "zipgen.json").read_text())
    m["format_version"] = 99
    (bad / "zipgen.json").write_text(json.dumps(m))
    assert main(["info", str(bad)]) == 2
    assert "format version 99" in capsys.readouterr().err


def test_missing_manifest_means_not_a_checkpoint(compressed, tmp_path):
    bad = _copy(compressed, tmp_path / "nomanifest")
    (bad / "zipgen.json").unlink()
    with pytest.raises(zipgen.FormatError, match="not a zipgen checkpoint"):
        zipgen.load(bad)


def test_verify_against_a_different_source(compressed, minilm_dir, capsys):
    # the FP32 original differs from the BF16 copy that was compressed without a cast
    assert main(["verify", str(compressed), "--against", str(minilm_dir)]) == 1
    assert "differs from" in capsys.readouterr().out


def test_existing_destination_is_kept(bf16_sharded, tmp_path, capsys):
    dst = tmp_path / "exists"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["compress", str(bf16_sharded), str(dst), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"
    assert main(["compress", str(bf16_sharded), str(dst), "--quiet", "--overwrite"]) == 0
    assert (dst / "zipgen.json").is_file() and not (dst / "keep.txt").exists()


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        return Path("/sys")  # root ignores permissions, but sysfs refuses new folders
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked


def test_unwritable_destination(bf16_sharded, tmp_path, capsys):
    parent = _unwritable_folder(tmp_path)
    assert main(["compress", str(bf16_sharded), str(parent / "zg"), "--quiet"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert not (parent / "zg").exists()


def test_missing_parent_destination(bf16_sharded, tmp_path, capsys):
    assert main(["compress", str(bf16_sharded), str(tmp_path / "no" / "zg"), "--quiet"]) == 2
    assert "parent folder does not exist" in capsys.readouterr().err


def test_interrupted_run_leaves_nothing(bf16_sharded, tmp_path, monkeypatch):
    import zipgen.checkpoint.writer as writer

    calls = {"n": 0}
    real = writer.compress

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "compress", failing)
    with pytest.raises(KeyboardInterrupt):
        compress_checkpoint(bf16_sharded, tmp_path / "zg", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither DST nor the hidden partial folder


def test_include_exclude_and_shards(bf16_sharded, tmp_path):
    policy = Policy(include=("*.attention.*",), exclude=("*layer.5*",))
    report = compress_checkpoint(bf16_sharded, tmp_path / "zg", policy, progress=False,
                                 max_shard_bytes=4_000_000)
    compressed = {r.name for r in report.tensors if r.kind == "tca-tbe"}
    assert compressed and all(".attention." in n and "layer.5" not in n for n in compressed)
    assert len(list((tmp_path / "zg").glob("*.safetensors"))) > 3  # shards were flushed
    assert verify_checkpoint(tmp_path / "zg", bf16_sharded, progress=False).ok


def test_single_file_source(bf16_sharded, tmp_path):
    src = next(bf16_sharded.glob("*.safetensors"))
    report = compress_checkpoint(src, tmp_path / "zg", progress=False)
    assert report.tensors and report.copied == []


def test_bad_sources(tmp_path, capsys):
    assert main(["compress", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compress", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    assert "no .safetensors" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    assert main(["compress", str(junk), str(tmp_path / "o")]) == 2
    assert "cannot read safetensors header" in capsys.readouterr().err


def test_example_path(capsys, minilm_dir):
    assert main(["example", "minilm"]) == 0
    assert Path(capsys.readouterr().out.strip()) == minilm_dir

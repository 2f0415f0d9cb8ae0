"""The runtime's kernel lookup (zipgen.bundle.loader) with fake sources: synthetic ELF cubins in
bundles made here and a recording stand-in for NVRTC, so nothing is compiled (CPU only, fast)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

import zipgen.compile.cache as cache_module
from zipgen.bundle import loader, resolve_kernel
from zipgen.bundle.build import kernel_entry, new_manifest
from zipgen.codegen import DecodeConfig, ZipGemmConfig, render
from zipgen.compile import CompileResult, cubin_sm
from zipgen.errors import BundleError, MissingKernelError, ZipgenError

ARCH = "sm_90"
DECODE = DecodeConfig()


def fake_cubin(arch: str, payload: bytes = b"") -> bytes:
    """A 64-bit ELF header that cubin_sm reads as `arch` (ABI version 8: SM in e_flags bits 8-15)."""
    header = bytearray(64)
    header[:4], header[4], header[8] = b"\x7fELF", 2, 8
    struct.pack_into("<I", header, 48, int(arch[3:5]) << 8)
    return bytes(header) + payload


def make_bundle(root: Path, kernels, tag: bytes, cubin_arch=None, **manifest_fields) -> Path:
    """A bundle of (op, arch, config) kernels whose cubins are fake and carry `tag`."""
    entries = []
    for op, arch, cfg in kernels:
        rendered = render(op, arch, cfg)
        cubin = fake_cubin(cubin_arch or arch, rendered.kernel_name.encode() + b"|" + tag)
        (root / arch).mkdir(parents=True, exist_ok=True)
        (root / arch / f"{rendered.kernel_name}.cubin").write_bytes(cubin)
        entries.append(kernel_entry(rendered, cubin, default=True, tuned=False))
    data = json.loads(new_manifest(entries).to_json())
    data.update(manifest_fields)
    (root / "bundle.json").write_text(json.dumps(data))
    return root


@pytest.fixture(autouse=True)
def isolated(isolated_bundles):
    """Own cubin cache per test, no bundle from the environment or an install (conftest)."""


@pytest.fixture
def nvrtc(monkeypatch) -> list:
    """NVRTC replaced by a recorder that returns a fake cubin for the arch asked for."""
    calls = []

    def compile_cubin(source, arch, options=(), include_dirs=(), source_name="kernel.cu"):
        calls.append((source_name, arch))
        return CompileResult(fake_cubin(arch, b"jit"), "", arch, (13, 5), tuple(options))

    monkeypatch.setattr(cache_module, "compile_cubin", compile_cubin)
    return calls


def resolve(op="decode", config=DECODE, arch=ARCH):
    return resolve_kernel(op, arch, config)


def test_lookup_order_env_bundle_then_installed_then_cache_then_nvrtc(tmp_path, monkeypatch, nvrtc):
    kernel = [("decode", ARCH, DECODE)]
    got = resolve()  # nothing prebuilt: compiled now, and so cached
    assert got.origin == "nvrtc" and got.cubin.endswith(b"jit") and len(nvrtc) == 1
    assert resolve().origin == "cache"
    installed = make_bundle(tmp_path / "site" / "zipgen_kernels" / "b1", kernel, b"installed")
    monkeypatch.setattr(loader, "search_path", [tmp_path / "site" / "zipgen_kernels"])
    assert resolve().origin == f"bundle {installed}"
    explicit = make_bundle(tmp_path / "mine", kernel, b"explicit")
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(explicit))
    got = resolve()
    assert got.origin == f"bundle {explicit}" and got.cubin.endswith(b"explicit")
    monkeypatch.delenv(loader.ENV_BUNDLE_DIR)
    assert resolve().cubin.endswith(b"installed")
    monkeypatch.setattr(loader, "search_path", [])
    assert resolve().origin == "cache"
    assert len(nvrtc) == 1, "only the first lookup compiled"


def test_a_bundle_without_the_kernel_falls_through(tmp_path, monkeypatch, nvrtc):
    other = make_bundle(tmp_path / "b", [("decode", ARCH, DecodeConfig(8, 1))], b"x")
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(other))
    assert resolve().origin == "nvrtc"


def test_search_path_entry_may_itself_be_a_bundle(tmp_path, monkeypatch, nvrtc):
    b = make_bundle(tmp_path / "bundles", [("decode", ARCH, DECODE)], b"x")
    monkeypatch.setattr(loader, "search_path", [tmp_path / "missing", b])
    assert loader.bundle_dirs() == [b]
    assert resolve().origin == f"bundle {b}" and not nvrtc


def test_no_jit_with_the_kernel_in_a_bundle_never_calls_nvrtc(tmp_path, monkeypatch, nvrtc):
    cfg = ZipGemmConfig(4, 2, 1, 1)
    b = make_bundle(tmp_path / "b", [("zipgemm", ARCH, cfg), ("decode", ARCH, DECODE)], b"x")
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(b))
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    assert resolve("zipgemm", cfg).kernel_name == "zipgemm_sm90_r16_t16_w4_d1"
    assert resolve().kernel_name == "zipgen_decode_sm90_w4_s1"
    assert not nvrtc


@pytest.mark.parametrize("op, config, extra", [
    ("decode", None, "zipgen gen --arch sm_90 --out DIR --cubin"),
    ("zipgemm", ZipGemmConfig(2, 1, 1, 1), "--db TUNING_DB"),
])
def test_no_jit_and_no_kernel_raises_naming_the_kernel_and_the_command(nvrtc, monkeypatch, op,
                                                                       config, extra):
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    with pytest.raises(MissingKernelError) as info:
        resolve_kernel(op, ARCH, config)
    e, message = info.value, str(info.value)
    cfg = config or DECODE
    assert (e.op, e.arch, e.config) == (op, ARCH, cfg)
    for part in (e.kernel_name, op, ARCH, cfg.describe(), "ZIPGEN_DISABLE_JIT=1",
                 "zipgen bundle build --arch sm_90 --out DIR", "export ZIPGEN_BUNDLE_DIR=DIR", extra):
        assert part in message, part
    assert not nvrtc


@pytest.mark.parametrize("jit", ["0", "", "no"])
def test_only_a_true_value_disables_jit(monkeypatch, nvrtc, jit):
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, jit)
    assert resolve().origin == "nvrtc"


def _other_version(root):
    return make_bundle(root, [("decode", ARCH, DECODE)], b"x", zipgen_version="0.0.1")


def _other_arch_cubin(root):
    return make_bundle(root, [("decode", ARCH, DECODE)], b"x", cubin_arch="sm_80")


def _bad_sha(root):
    b = make_bundle(root, [("decode", ARCH, DECODE)], b"x")
    path = b / ARCH / "zipgen_decode_sm90_w4_s1.cubin"
    path.write_bytes(path.read_bytes()[:-1] + b"y")
    return b


def _stale_source(root):
    b = make_bundle(root, [("decode", ARCH, DECODE)], b"x")
    data = json.loads((b / "bundle.json").read_text())
    data["kernels"][0]["source_sha256"] = "0" * 64
    (b / "bundle.json").write_text(json.dumps(data))
    return b


REFUSED = {"version": (_other_version, "built by zipgen 0.0.1"),
           "arch": (_other_arch_cubin, "is an sm_80 cubin, the manifest says sm_90"),
           "sha256": (_bad_sha, "sha256 of sm_90/zipgen_decode_sm90_w4_s1.cubin differs"),
           "source": (_stale_source, "another kernel source")}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_bundle_is_skipped_with_a_warning(tmp_path, monkeypatch, nvrtc, caplog, case):
    make, message = REFUSED[case]
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(make(tmp_path / "b")))
    got = resolve()
    assert got.origin == "nvrtc" and cubin_sm(got.cubin) == 90
    assert message in caplog.text and str(tmp_path / "b") in caplog.text


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_bundle_is_an_error_without_jit(tmp_path, monkeypatch, nvrtc, case):
    make, message = REFUSED[case]
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(make(tmp_path / "b")))
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    with pytest.raises(BundleError, match=message):
        resolve()
    assert not nvrtc


def test_a_missing_bundle_dir_is_a_warning(tmp_path, monkeypatch, nvrtc, caplog):
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(tmp_path / "nowhere"))
    assert resolve().origin == "nvrtc"
    assert "is not a kernel bundle: cannot read bundle.json" in caplog.text


def test_a_cache_entry_of_another_arch_is_never_returned(monkeypatch, nvrtc):
    assert resolve().origin == "nvrtc"  # fills the cache; now damage that entry
    key = loader.cache_key(render("decode", ARCH, DECODE).source, ARCH, "decode", DECODE.as_dict(),
                           loader.compile_options(), (loader.include_dir(),))
    cache_module.CubinCache().put(key, fake_cubin("sm_80"))
    with pytest.raises(ZipgenError, match="is an sm_80 cubin, not an sm_90 cubin; delete the cubin cache"):
        resolve()
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    with pytest.raises(ZipgenError, match="not an sm_90 cubin"):
        resolve()


def test_manifest_checked_once_per_process_and_cubins_at_each_load(tmp_path, monkeypatch, nvrtc,
                                                                    caplog):
    configs = [DecodeConfig(w, 1) for w in (1, 2, 4)]
    b = make_bundle(tmp_path / "b", [("decode", ARCH, c) for c in configs], b"x")
    checks = []
    real = loader.check_manifest
    monkeypatch.setattr(loader, "check_manifest", lambda m, root: (checks.append(root), real(m, root)))
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(b))
    for cfg in configs + configs:
        assert resolve(config=cfg).origin == f"bundle {b}"
    assert len(checks) == 1
    path = b / ARCH / "zipgen_decode_sm90_w1_s1.cubin"
    path.write_bytes(b"\0" + path.read_bytes()[1:])  # damaged after its manifest was checked
    assert resolve(config=configs[0]).origin == "nvrtc" and "differs" in caplog.text
    make_bundle(b, [("decode", ARCH, configs[0])], b"rebuilt")  # a new bundle.json: checked anew
    assert resolve(config=configs[0]).cubin.endswith(b"rebuilt") and len(checks) == 2


def test_get_kernel_loads_what_the_lookup_resolved(tmp_path, monkeypatch, nvrtc):
    import zipgen.runtime.kernels as kernels

    loaded = []

    class ObjectCode:
        @staticmethod
        def from_cubin(cubin):
            return type("Code", (), {"get_kernel": lambda self, name: loaded.append((cubin, name))
                                     or name})()

    monkeypatch.setattr(kernels, "_kernels", {})
    monkeypatch.setattr(kernels, "device_arch", lambda device: ARCH)
    monkeypatch.setattr(kernels, "_make_current", lambda index: None)
    monkeypatch.setattr(kernels, "_cuda_core", lambda: type("cc", (), {"ObjectCode": ObjectCode}))
    b = make_bundle(tmp_path / "b", [("decode", ARCH, DECODE)], b"bundled")
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(b))
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    device = torch.device("cuda", 0)
    assert kernels.get_kernel("decode", DECODE, device) == "zipgen_decode_sm90_w4_s1"
    assert kernels.get_kernel("decode", DECODE, device) == "zipgen_decode_sm90_w4_s1"  # kept
    assert len(loaded) == 1 and loaded[0][0].endswith(b"bundled") and not nvrtc

"""zipgen.bundle with real NVRTC cubins (CPU only): build, verify, ls, and what a damaged bundle
says. One bundle (sm_80 + sm_90 + a small tuning database) is built per module."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import zipgen.bundle.build as build_module
from zipgen import FORMAT_VERSION
from zipgen.bundle import build_bundle, read_manifest, resolve_kernel, verify_bundle
from zipgen.bundle import loader
from zipgen.bundle.build import default_configs
from zipgen.bundle.verify import entry_config
from zipgen.cli.main import main
from zipgen.codegen import DecodeConfig, ZipGemmConfig
from zipgen.compile import cubin_sm
from zipgen.errors import BundleError, InputError

ARCHES = ("sm_80", "sm_90")
TUNED = ZipGemmConfig(2, 1, 1, 1)  # a winner no default policy picks
DEFAULT_AND_TUNED = ZipGemmConfig(16, 1, 1, 1)  # fused_config's choice for 4096 x 4096, M = 1
TUNED_DECODE = DecodeConfig(8, 1)  # the runtime picks tuned decoders too


SLOWER = ZipGemmConfig(4, 1, 2, 1)  # measured for TUNED's problem too, slower: not a winner


def _record(status, op, arch, config, median_us=10.0, n=4096):
    """A line of the tuning database, as zipgen.tune writes it."""
    ok = status == "ok"
    return json.dumps({
        "schema": 1, "status": status, "config": config, "error": None if ok else "failed",
        "problem": {"op": op, "n": n, "k": 4096, "m": None if op == "decode" else 1,
                    "m_bucket": None if op == "decode" else 1, "dtypes": "bf16",
                    "format_version": FORMAT_VERSION},
        "target": {"arch": arch, "device_name": "NVIDIA H100", "sm_count": 132},
        "median_us": median_us if ok else None, "p10_us": None, "p90_us": None,
        "env": {"time": "2026-11-28T00:00:00+00:00"}, "detail": None})


DB_LINES = [
    _record("ok", "zipgemm", "sm_90", TUNED.as_dict()),
    _record("ok", "zipgemm", "sm_90", SLOWER.as_dict(), median_us=12.0),
    _record("ok", "zipgemm", "sm_80", DEFAULT_AND_TUNED.as_dict()),
    _record("runtime", "zipgemm", "sm_90", ZipGemmConfig(16, 8, 4, 4).as_dict()),  # failed: ignored
    _record("ok", "zipgemm", "sm_86", TUNED.as_dict()),  # an arch not built
    _record("ok", "decode", "sm_90", TUNED_DECODE.as_dict()),
    "{not json",
]
INVALID = _record("ok", "zipgemm", "sm_89", {**TUNED.as_dict(), "warps_per_cta": 3})
HAS_TUNER = build_module._tuner() is not None


@pytest.fixture(autouse=True)
def isolated(isolated_bundles):
    """Own cubin cache per test, no bundle from the environment or an install (conftest)."""


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundle-cache")


@pytest.fixture(scope="module")
def built(tmp_path_factory, module_cache):
    root = tmp_path_factory.mktemp("bundle")
    db = root / "tuning.jsonl"
    db.write_text("\n".join(DB_LINES) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZIPGEN_CACHE_DIR", str(module_cache))
        return build_bundle(ARCHES, db=db, out=root / "bundle")


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A private copy of the bundle, to damage."""
    return Path(shutil.copytree(built.path, tmp_path / "copy"))


def _entry(manifest, kernel_name):
    return next(e for e in manifest.kernels if e.kernel_name == kernel_name)


def _edit_manifest(root: Path, edit) -> None:
    data = json.loads((root / "bundle.json").read_text())
    edit(data)
    (root / "bundle.json").write_text(json.dumps(data))


# --- build ---------------------------------------------------------------------------------------

def test_bundle_holds_the_defaults_and_the_winners_of_its_arches(built):
    by_arch = {a: {(e.op, entry_config(e)): e for e in built.manifest.kernels if e.arch == a}
               for a in ARCHES}
    assert {e.arch for e in built.manifest.kernels} == set(ARCHES)
    for arch, entries in by_arch.items():
        assert entries["decode", DecodeConfig()].default
        gemm = {c for op, c in entries if op == "zipgemm"}
        assert set(default_configs("zipgemm", arch)) <= gemm
    sm90, sm80 = by_arch["sm_90"], by_arch["sm_80"]
    assert sm90["decode", TUNED_DECODE].origin == "tuned" and ("decode", TUNED_DECODE) not in sm80
    assert sm90["zipgemm", TUNED].tuned and not sm90["zipgemm", TUNED].default
    assert ("zipgemm", TUNED) not in sm80  # its sm_86 record is not for sm_80
    assert sm80["zipgemm", DEFAULT_AND_TUNED].origin == "default+tuned"
    assert sum(e.tuned for e in built.manifest.kernels) == 3 + (not HAS_TUNER)
    assert (("zipgemm", SLOWER) in sm90) is not HAS_TUNER  # only the tuner knows the fastest
    notes = "\n".join(built.notes)
    assert "arches not built were left out: sm_86" in notes and "tuning.jsonl:7: skipped, not JSON" in notes


@pytest.mark.parametrize("tuner", [True, False] if HAS_TUNER else [False])
def test_tuning_records_are_read_defensively(tmp_path, monkeypatch, tuner):
    if not tuner:
        monkeypatch.setattr(build_module, "_tuner", lambda: None)
    folder = tmp_path / "db"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "sm_90-h100.jsonl").write_text("\n".join(DB_LINES[:2] + [INVALID, "[1]", ""]
                                                             + DB_LINES[5:6]))
    (folder / "sm_80-a100.jsonl").write_text(DB_LINES[2] + "\n")
    winners, notes = build_module.read_winners(folder)
    expected = ([("sm_90", TUNED), ("sm_80", DEFAULT_AND_TUNED), ("sm_90", TUNED_DECODE)]
                + ([] if tuner else [("sm_90", SLOWER)]))
    assert sorted(winners, key=str) == sorted(expected, key=str)
    assert len(notes) == 1 and "sm_90-h100.jsonl:3: skipped" in notes[0]
    assert "warps_per_cta=3 is not 1, 2, 4, 8 or 16" in notes[0]


def test_files_match_the_manifest(built):
    m = built.manifest
    assert m.schema_version == 1 and m.zipgen_version == "0.1.0" and m.format_version == FORMAT_VERSION
    for e in m.kernels:
        data = (built.path / e.arch / f"{e.kernel_name}.cubin").read_bytes()
        assert e.cubin == f"{e.arch}/{e.kernel_name}.cubin" and e.size == len(data)
        assert cubin_sm(data) == int(e.arch[3:])
        cfg = entry_config(e)
        assert (e.threads_per_cta, e.static_smem_bytes) == (cfg.threads, cfg.smem_bytes)
        if e.registers is not None:  # cuobjdump was found
            static = 0 if cfg.dynamic_smem else cfg.smem_bytes  # cuobjdump counts static only
            assert e.registers > 0 and e.local_memory == 0 and e.shared_memory >= static
    assert read_manifest(built.path) == m
    leftovers = [p.name for p in built.path.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_verify_and_ls(built, capsys):
    assert verify_bundle(built.path) == built.manifest
    assert main(["bundle", "verify", str(built.path)]) == 0
    assert f"OK: {len(built.manifest.kernels)} kernels for sm_80, sm_90" in capsys.readouterr().out
    assert main(["bundle", "ls", str(built.path)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["kernel", "op", "arch", "config", "origin", "regs", "smem", "B", "size"]
    for e in built.manifest.kernels:
        line = next(ln for ln in out.splitlines() if ln.startswith(e.kernel_name + " "))
        assert e.origin in line and e.arch in line and " KB" in line
    assert "warps_per_cta=2 token_tiles=1 depth=1 row_groups=1" in out


def test_existing_out_needs_overwrite_and_must_be_a_bundle(built, copy, module_cache, monkeypatch,
                                                           capsys):
    monkeypatch.setenv("ZIPGEN_CACHE_DIR", str(module_cache))  # cache hits: no compile
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        build_bundle(["sm_80"], out=copy)
    (copy / "stale.txt").write_text("from the old bundle")
    assert main(["bundle", "build", "--arch", "sm_80", "--out", str(copy), "--overwrite"]) == 0
    assert "use it: export ZIPGEN_BUNDLE_DIR=" in capsys.readouterr().out
    assert not (copy / "stale.txt").exists() and not (copy / "sm_90").exists()
    assert {e.arch for e in verify_bundle(copy).kernels} == {"sm_80"}
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]
    other = copy.parent / "not-a-bundle"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a kernel bundle"):
        build_bundle(["sm_80"], out=other, overwrite=True)
    assert (other / "notes.txt").exists()


def test_a_failed_build_publishes_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(op, arch, config=None):
        calls.append(op)
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(build_module, "build_kernel", failing)
    with pytest.raises(RuntimeError):
        build_bundle(["sm_90"], out=tmp_path / "out")
    assert calls and not list(tmp_path.glob("*out*"))


def test_unknown_arch_is_refused_before_compiling(tmp_path):
    with pytest.raises(InputError, match="unknown arch 'sm_75'"):
        build_bundle(["sm_90", "sm_75"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- verify: a damaged bundle names the kernel and the problem ----------------------------------

DECODE90 = "zipgen_decode_sm90_w4_s1"


def _flip_byte(root, e):
    data = bytearray((root / e.cubin).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / e.cubin).write_bytes(bytes(data))


def _swap_in_sm80_cubin(root, e):
    """The sm_80 decoder's cubin under the sm_90 name, with a manifest entry that vouches for it."""
    data = (root / "sm_80" / "zipgen_decode_sm80_w4_s1.cubin").read_bytes()
    data = data.replace(b"zipgen_decode_sm80", b"zipgen_decode_sm90")  # same length
    (root / e.cubin).write_bytes(data)
    import hashlib

    def edit(m):
        k = next(k for k in m["kernels"] if k["kernel_name"] == e.kernel_name)
        k["sha256"], k["size"] = hashlib.sha256(data).hexdigest(), len(data)
    _edit_manifest(root, edit)


def _set_field(field, value):
    def damage(root, e):
        def edit(m):
            next(k for k in m["kernels"] if k["kernel_name"] == e.kernel_name)[field] = value
        _edit_manifest(root, edit)
    return damage


def _set_top(field, value):
    return lambda root, e: _edit_manifest(root, lambda m: m.__setitem__(field, value))


DAMAGE = {
    "flipped byte": (_flip_byte, rf"{DECODE90} .*sha256 of sm_90/{DECODE90}.cubin differs"),
    "truncated": (lambda r, e: (r / e.cubin).write_bytes((r / e.cubin).read_bytes()[:1000]),
                  rf"{DECODE90} .*is 1000 bytes, the manifest says"),
    "wrong sha": (_set_field("sha256", "0" * 64), rf"{DECODE90} .*sha256 .* differs"),
    "missing file": (lambda r, e: (r / e.cubin).unlink(), rf"{DECODE90} .*cannot read sm_90/"),
    "other arch": (_swap_in_sm80_cubin, rf"{DECODE90} .*is an sm_80 cubin, the manifest says sm_90"),
    "stale template": (_set_field("source_sha256", "0" * 64), rf"{DECODE90} .*another kernel source"),
    "path outside": (_set_field("cubin", "../x.cubin"), rf"{DECODE90} .*cubin path '\.\./x\.cubin'"),
    "zipgen version": (_set_top("zipgen_version", "0.0.1"), "built by zipgen 0.0.1, this is zipgen 0.1.0"),
    "format version": (_set_top("format_version", 9), "TCA-TBE format version 9, this zipgen reads version 3"),
    "schema version": (_set_top("schema_version", 2), "bundle schema version 2; this zipgen reads version 1"),
    "field type": (_set_field("size", "big"), rf"kernel {DECODE90}: 'size' is 'big'"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_bundle_fails_verify_naming_the_problem(copy, case):
    damage, message = DAMAGE[case]
    damage(copy, _entry(read_manifest(copy), DECODE90))
    with pytest.raises(BundleError, match=message):
        verify_bundle(copy)


def test_cli_verify_of_a_damaged_bundle_exits_2_and_lists_every_problem(copy, capsys):
    m = read_manifest(copy)
    for name in (DECODE90, "zipgen_decode_sm80_w4_s1"):
        _flip_byte(copy, _entry(m, name))
    assert main(["bundle", "verify", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "failed verification (2 problems)" in err and DECODE90 in err and "sm80_w4_s1" in err


# --- the runtime lookup with this bundle ---------------------------------------------------------

def _forbid_nvrtc(monkeypatch):
    import zipgen.compile.cache as cache_module

    def no_nvrtc(*args, **kwargs):
        raise AssertionError("NVRTC was called")
    monkeypatch.setattr(cache_module, "compile_cubin", no_nvrtc)


def test_no_jit_resolves_every_kernel_from_the_bundle_without_nvrtc(built, monkeypatch):
    _forbid_nvrtc(monkeypatch)
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(built.path))
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    for e in built.manifest.kernels:
        got = resolve_kernel(e.op, e.arch, entry_config(e))
        assert got.origin == f"bundle {built.path}" and got.kernel_name == e.kernel_name
        assert got.cubin == (built.path / e.cubin).read_bytes()


def test_a_damaged_cubin_is_an_error_without_jit_and_skipped_with_it(copy, module_cache,
                                                                      monkeypatch, caplog):
    _flip_byte(copy, _entry(read_manifest(copy), DECODE90))
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(copy))
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    with pytest.raises(BundleError, match=rf"{DECODE90} .*refused: sha256"):
        resolve_kernel("decode", "sm_90")
    monkeypatch.delenv(loader.ENV_DISABLE_JIT)
    monkeypatch.setenv("ZIPGEN_CACHE_DIR", str(module_cache))  # where the build compiled it
    got = resolve_kernel("decode", "sm_90")
    assert got.origin == "cache" and cubin_sm(got.cubin) == 90
    assert "trying the next source" in caplog.text and DECODE90 in caplog.text


def test_a_wgmma_winner_ships_as_an_sm_90a_cubin_that_the_runtime_finds(tmp_path, monkeypatch):
    """A tuned wgmma configuration of an sm_90 device is compiled for sm_90a
    (codegen.compile_arch), verified, and resolved from the bundle without NVRTC."""
    wgmma = ZipGemmConfig(8, 4, 1, 4, True, 1, True)
    db = tmp_path / "tuning.jsonl"
    db.write_text(_record("ok", "zipgemm", "sm_90", wgmma.as_dict()) + "\n")
    result = build_bundle(["sm_90"], db=db, out=tmp_path / "bundle")
    entry = next(e for e in result.manifest.kernels if entry_config(e) == wgmma)
    assert entry.arch == "sm_90a" and entry.tuned and entry.kernel_name.endswith("_wg")
    assert cubin_sm((result.path / entry.cubin).read_bytes()) == 90
    assert verify_bundle(result.path) == result.manifest
    _forbid_nvrtc(monkeypatch)
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(result.path))
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    for arch in ("sm_90", "sm_90a"):  # the device's arch, or the one compile_arch gives
        got = resolve_kernel("zipgemm", arch, wgmma)
        assert got.origin == f"bundle {result.path}" and got.kernel_name == entry.kernel_name


def test_a_paired_winner_ships_with_its_gated_mlp_epilogue(tmp_path, monkeypatch):
    """A paired winner with 2 row groups brings its silu_mul variant (the runtime derives it for
    a stacked gate / up at M = 1), resolved from the bundle without NVRTC; a one-row-group
    winner, which cannot take the epilogue, brings none."""
    paired = ZipGemmConfig(4, 1, 1, 2, strip_pairs=True)
    single = ZipGemmConfig(8, 1, 1, 1, strip_pairs=True)
    db = tmp_path / "tuning.jsonl"
    db.write_text("".join(_record("ok", "zipgemm", "sm_90", c.as_dict(), n=n) + "\n"
                          for c, n in ((paired, 28672), (single, 6144))))
    result = build_bundle(["sm_90"], db=db, out=tmp_path / "bundle")
    configs = {entry_config(e): e for e in result.manifest.kernels if e.op == "zipgemm"}
    gated = ZipGemmConfig(4, 1, 1, 2, strip_pairs=True, silu_mul=True)
    assert configs[gated].tuned and configs[gated].kernel_name.endswith("_p2_silu")
    assert paired in configs and single in configs
    assert not any(c.silu_mul and c.row_groups == 1 for c in configs)
    _forbid_nvrtc(monkeypatch)
    monkeypatch.setenv(loader.ENV_BUNDLE_DIR, str(result.path))
    monkeypatch.setenv(loader.ENV_DISABLE_JIT, "1")
    got = resolve_kernel("zipgemm", "sm_90", gated)
    assert got.origin == f"bundle {result.path}" and got.kernel_name == configs[gated].kernel_name

"""zipgen.codegen on a CPU-only machine: rendering (golden snapshot in generated/), config
validation, NVRTC compiles of every op x arch, SASS resource usage, and `zipgen gen`."""
from __future__ import annotations

import difflib
import importlib
import itertools
import re
import subprocess
from pathlib import Path

import jinja2
import pytest

import zipgen
from zipgen.cli.main import main
from zipgen.codegen import (ARCHES, DEFAULT_ARCHES, OPS, DecodeConfig, arch_traits, build_kernel,
                            default_config, render)
from zipgen.compile import cubin_sm
from zipgen.errors import InputError

# The module, not the function zipgen.codegen re-exports under the same name.
render_module = importlib.import_module("zipgen.codegen.render")
GENERATED = Path(__file__).resolve().parents[1] / "generated"
REGEN = "run `zipgen gen --out generated` and commit the result"
COMPILE_ARCHES = (*DEFAULT_ARCHES, "sm_90a")
DEFAULT_CASES = [(op, arch) for op in OPS for arch in DEFAULT_ARCHES]
COMPILE_CASES = [(op, arch) for op in OPS for arch in COMPILE_ARCHES]


@pytest.fixture(autouse=True)
def cache_dir(cubin_cache_dir) -> Path:
    """Every test gets its own cubin cache (conftest.cubin_cache_dir)."""
    return cubin_cache_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The default kernel of every op x arch, compiled once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZIPGEN_CACHE_DIR", str(tmp_path_factory.mktemp("codegen-cache")))
        return {(op, arch): build_kernel(op, arch, default_config(op, arch_traits(arch)))
                for op, arch in COMPILE_CASES}


def _default(op: str, arch: str):
    return render(op, arch, default_config(op, arch_traits(arch)))


def _cuobjdump() -> str | None:
    try:
        from cuda.pathfinder import find_nvidia_binary_utility  # PATH, CUDA_HOME and pip wheels
    except ImportError:
        return None
    return find_nvidia_binary_utility("cuobjdump")


# --- golden snapshot -------------------------------------------------------------------------------


@pytest.mark.parametrize("op, arch", DEFAULT_CASES)
def test_generated_sources_match_the_templates(op, arch):
    kernel = _default(op, arch)
    path = GENERATED / arch / kernel.file_name
    assert path.is_file(), f"{path} is missing; {REGEN}"
    # Bytes, not text: a newline translated on checkout is a difference too.
    on_disk = path.read_bytes()
    if on_disk != kernel.source.encode():
        diff = difflib.unified_diff(on_disk.decode(errors="replace").splitlines(keepends=True),
                                    kernel.source.splitlines(keepends=True),
                                    f"generated/{arch}/{kernel.file_name}", "rendered now")
        pytest.fail(f"{path} differs from what templates/{kernel.config.template} renders; "
                    f"{REGEN}\n" + "".join(itertools.islice(diff, 40)), pytrace=False)


def test_generated_has_no_stale_sources():
    expected = {GENERATED / arch / _default(op, arch).file_name for op, arch in DEFAULT_CASES}
    present = set(GENERATED.rglob("*.cu"))
    stale = sorted(str(p.relative_to(GENERATED)) for p in present - expected)
    assert not stale, (f"generated/ holds sources no op's default kernel renders to: {stale}; "
                       f"delete them, then {REGEN}")
    assert (GENERATED / "README.md").is_file()


def test_header_names_template_config_arch_format_and_kernel():
    for op, arch in DEFAULT_CASES + [(op, "sm_90a") for op in OPS]:
        kernel = _default(op, arch)
        header = list(itertools.takewhile(lambda line: line.startswith("//"),
                                          kernel.source.splitlines()))
        text = "\n".join(header)
        assert f"templates/{kernel.config.template}" in text
        assert f"config: {kernel.config.describe()}" in text
        assert f"arch: {arch} " in text
        assert f"format version: {zipgen.FORMAT_VERSION}" in text
        assert f"kernel: {kernel.kernel_name}" in text
        assert f"zipgen {zipgen.__version__}" in text


# --- NVRTC -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op, arch", COMPILE_CASES)
def test_default_kernel_compiles_for_every_arch(built, op, arch):
    kernel = built[op, arch]
    assert kernel.cubin.startswith(b"\x7fELF")
    assert cubin_sm(kernel.cubin) == ARCHES[arch].capability[0] * 10 + ARCHES[arch].capability[1]
    assert kernel.kernel_name.encode() in kernel.cubin


DECODE_GRID = [DecodeConfig(warps_per_cta=w, strips_per_warp=s) for w in (1, 4, 16) for s in (1, 8)]


def test_config_grid_renders_and_compiles_with_unique_names():
    traits = arch_traits("sm_90")
    names = set()
    for cfg in DECODE_GRID:
        assert not cfg.problems(traits)
        kernel = build_kernel("decode", "sm_90", cfg)
        name = kernel.kernel_name
        assert "sm90" in name and f"_w{cfg.warps_per_cta}_s{cfg.strips_per_warp}" in name
        assert cubin_sm(kernel.cubin) == 90 and name.encode() in kernel.cubin
        assert f"__launch_bounds__({cfg.threads})" in kernel.rendered.source
        names.add(name)
    # Unique over configs and over arches (sm_90 and sm_90a included).
    names |= {render("decode", arch, cfg).kernel_name for arch in ARCHES for cfg in DECODE_GRID}
    assert len(names) == len(ARCHES) * len(DECODE_GRID)


@pytest.mark.parametrize("op, arch", [(op, "sm_90") for op in OPS])
def test_default_kernel_sass_has_no_local_memory(built, op, arch, tmp_path):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    kernel = built[op, arch]
    path = tmp_path / f"{kernel.kernel_name}.cubin"
    path.write_bytes(kernel.cubin)
    out = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    # " Function zipgen_decode_sm90_w8_s4:\n  REG:64 STACK:0 SHARED:19456 LOCAL:0 ..."
    m = re.search(rf"Function {re.escape(kernel.kernel_name)}:?\s*\n(.*)", out)
    assert m, out
    usage = m.group(1).split()
    assert "STACK:0" in usage and "LOCAL:0" in usage, f"register spills or stack use:\n{out}"


# Instructions each default sm_90 kernel must contain at least this often: the decode (PRMT: one
# per register pair of a strip), the tensor cores, the staging stores and loads. A template edit that drops a stage
# still compiles; this catches it without a GPU.
# decode: two weights per PRMT, the entries' funnel shifts (SHF.R.W), 16-byte row stores;
# zipgemm: the same decode, staged registers (STS/LDS.128), entries shuffled to the lanes (SHFL)
# and XORed into their owners' registers (ATOMS.XOR), tensor cores
SASS_FLOORS = {
    "decode": {"PRMT": 16, "SHF.R.W.U32": 1, "STS.U16": 1, "STG.E.128": 1},
    "zipgemm": {"PRMT": 16, "HMMA.16816.F32.BF16": 4, "STS.128": 4, "LDS.128": 4, "SHFL.IDX": 2,
                "ATOMS.XOR": 1},
}


@pytest.mark.parametrize("op", sorted(SASS_FLOORS))
def test_default_kernel_sass_has_every_stage(built, op, tmp_path):
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    from cuda.pathfinder import find_nvidia_binary_utility
    if find_nvidia_binary_utility("nvdisasm") is None:
        pytest.skip("nvdisasm, which cuobjdump --dump-sass runs, not found "
                    "(pip install nvidia-cuda-nvdisasm)")
    kernel = built[op, "sm_90"]
    path = tmp_path / f"{kernel.kernel_name}.cubin"
    path.write_bytes(kernel.cubin)
    sass = subprocess.run([tool, "--dump-sass", str(path)], capture_output=True, text=True,
                          check=True, timeout=60).stdout
    for opcode, floor in SASS_FLOORS[op].items():
        count = len(re.findall(rf"\b{re.escape(opcode)}\b", sass))
        assert count >= floor, f"{kernel.kernel_name}: {count} x {opcode}, expected >= {floor}"


# Static SASS instructions per strip in the main loop of fused-kernel configurations on sm_90
# (the rarely taken patch rounds past 32 entries counted once): 225 (M = 1, direct), 245.5 /
# 231 / 236.5 (staged, 1 / 2 / 4 token tiles), 214.5 / 219.5 (two strip rows) with format
# version 2's cooperative patch (docs/ZIPGEMM.md; version 1's scan and per-lane patch loop
# took 272 at M = 1, the first loop 397). The kernel is latency- and issue-sensitive, so a
# template edit that adds work to the loop should show up here first.
LOOP_CEILINGS = {(4, 1, 1, 1, False): 235, (8, 1, 1, 2, True): 255, (8, 2, 1, 4, True): 245,
                 (8, 4, 1, 4, True): 250, (8, 2, 1, 4, True, 2): 225, (8, 4, 1, 4, True, 2): 230,
                 (16, 4, 3, 2, True): 240}  # 8 slices: 270.5 with the compare chain's 8 BARs


def _sm90_main_loop(fields):
    """The sm_90 kernel of ZipGemmConfig(*fields), its main loop's SASS rows and strips per loop
    body; skips without cuobjdump / nvdisasm."""
    tool = _cuobjdump()
    from cuda.pathfinder import find_nvidia_binary_utility
    if tool is None or find_nvidia_binary_utility("nvdisasm") is None:
        pytest.skip("cuobjdump / nvdisasm not found (pip install nvidia-cuda-cuobjdump "
                    "nvidia-cuda-nvdisasm)")
    from zipgen.codegen import ZipGemmConfig
    from zipgen.compile.sass import main_loop, sass_rows, strips_in
    kernel = build_kernel("zipgemm", "sm_90", ZipGemmConfig(*fields))
    body = main_loop(sass_rows(kernel.cubin, tool))
    return kernel, body, strips_in(body)


@pytest.mark.parametrize("fields", sorted(LOOP_CEILINGS))
def test_fused_main_loop_stays_within_its_instruction_budget(fields):
    kernel, body, strips = _sm90_main_loop(fields)
    per_strip = len(body) / strips
    assert sum(op.lstrip("@").startswith("HMMA") for _, op, _ in body) >= 4 * strips
    assert per_strip <= LOOP_CEILINGS[fields], (
        f"{kernel.kernel_name}: {per_strip:.1f} instructions per strip, budget "
        f"{LOOP_CEILINGS[fields]} (python benchmarks/sass_report.py zipgemm sm_90 "
        f"{' '.join(str(int(v)) for v in fields)} --lines shows where they go)")


# The wgmma kernels (sm_90a): 243-267 per strip at 4-16 warps and 32-128 tokens. With the
# warpgroups' barrier id an immediate chosen by a compare chain, ptxas kept the global-memory
# descriptor in registers and copied it to uniform ones before every load: 27-31 R2UR and
# 300-329 instructions per strip at 16 warps (tma_activations.cuh). With the K slice a
# non-uniform register, 11 R2UR per strip remained (the HGMMAs' shared-memory descriptors and
# the TMA's operands): 252-278 per strip. With it broadcast from lane 0, at most one.
WGMMA_LOOP_CEILINGS = {(4, 4, 1, 4, True, 1, True): 265, (8, 4, 1, 4, True, 1, True): 258,
                       (16, 4, 1, 4, True, 1, True): 250, (16, 16, 1, 4, True, 1, True): 272}


@pytest.mark.parametrize("fields", sorted(WGMMA_LOOP_CEILINGS))
def test_wgmma_main_loop_stays_within_its_instruction_budget(fields):
    kernel, body, strips = _sm90_main_loop(fields)
    ops = [op.lstrip("@") for _, op, _ in body]
    assert sum(op.startswith("HGMMA") for op in ops) >= 4 * strips
    # the slice is uniform (a constant for one warpgroup, else broadcast from lane 0), so the
    # descriptors stay in uniform registers
    r2ur = sum(op.startswith("R2UR") for op in ops)
    assert r2ur <= (0 if fields[0] == 4 else strips), (kernel.kernel_name, r2ur)
    assert len(body) / strips <= WGMMA_LOOP_CEILINGS[fields], (
        f"{kernel.kernel_name}: {len(body) / strips:.1f} instructions per strip, budget "
        f"{WGMMA_LOOP_CEILINGS[fields]}")


def _sm90_cubin(fields, tmp_path):
    """cuobjdump, ZipGemmConfig(*fields) and its sm_90 cubin written under tmp_path; skips
    without cuobjdump."""
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    from zipgen.codegen import ZipGemmConfig
    cfg = ZipGemmConfig(*fields)
    path = tmp_path / "k.cubin"
    path.write_bytes(build_kernel("zipgemm", "sm_90", cfg).cubin)
    return tool, cfg, path


@pytest.mark.parametrize("fields", [(4, 4, 4, 4, True), (8, 2, 1, 4, True), (16, 1, 1, 2, True),
                                    (8, 2, 1, 1, True), (4, 1, 1, 1, False), (8, 4, 1, 4, True, 2)])
def test_fused_kernel_reserves_only_the_barriers_it_uses(fields, tmp_path):
    """Row groups sharing staged activations sync on barriers 1 .. warps / row_groups (0 is
    __syncthreads). A barrier id in a register makes ptxas reserve all 16, which caps an SM at 4
    resident CTAs (Nsight Compute's "Block Limit Barriers", H200, 2026-11-28): only CTAs of 16
    warps (512 threads: 4 per SM at most anyway) take a register id, which saves the compare
    chain's predicated BAR.SYNC per slice (staged_activations.cuh, slice_barrier)."""
    tool, cfg, path = _sm90_cubin(fields, tmp_path)
    from zipgen.compile.cuobjdump import named_barriers
    shared = cfg.stage_x and cfg.row_groups > 1
    slices = cfg.warps_per_cta // cfg.row_groups
    expected = 1 if not shared else 16 if cfg.warps_per_cta == 16 and slices > 1 else 1 + slices
    assert named_barriers(tool, path) == expected


@pytest.mark.parametrize("fields", [(8, 1, 1, 4, True, 1, True), (8, 4, 2, 4, True, 1, True),
                                    (16, 1, 1, 4, True, 1, True), (16, 16, 1, 4, True, 1, True)])
def test_wgmma_kernels_with_several_warpgroups_lose_no_ctas_to_barriers(fields, tmp_path):
    """Their barrier id is a register (tma_activations.cuh), so ptxas reserves all 16 named
    barriers, which caps an SM at 4 CTAs; their registers cap it lower already (65536 per
    SM), so the barriers never decide occupancy."""
    tool, cfg, path = _sm90_cubin(fields, tmp_path)
    from zipgen.compile.cuobjdump import named_barriers, resource_usage
    assert named_barriers(tool, path) == 16
    (usage,) = resource_usage(tool, path).values()
    assert 65536 // (usage["REG"] * cfg.threads) < 4, usage


# --- validation ---------------------------------------------------------------------------------------


def test_invalid_config_lists_every_reason():
    cfg = DecodeConfig(warps_per_cta=3, strips_per_warp=5)
    problems = cfg.problems(arch_traits("sm_90"))
    assert len(problems) == 2
    with pytest.raises(InputError) as info:
        render("decode", "sm_90", cfg)
    message = str(info.value)
    assert "warps_per_cta=3 is not" in message and "strips_per_warp=5 is not" in message
    assert all(p in message for p in problems)


@pytest.mark.parametrize("op, arch, match", [
    ("nope", "sm_90", "unknown op 'nope'"),
    ("decode", "sm_75", "unknown arch 'sm_75'.*sm_80"),
    ("decode", "compute_90", "unknown arch"),
])
def test_unknown_op_or_arch_is_an_input_error(op, arch, match):
    with pytest.raises(InputError, match=match):
        render(op, arch)


def test_config_of_another_class_is_rejected():
    with pytest.raises(InputError, match="DecodeConfig"):
        render("decode", "sm_90", {"warps_per_cta": 8})


def test_undefined_template_variable_raises():
    """The environment is strict: a variable render() does not pass fails instead of
    rendering as an empty string."""
    env = render_module._environment(str(render_module.template_dir()))
    assert env.undefined is jinja2.StrictUndefined
    throwaway = {DecodeConfig.template: "{{ header }}\n{{ not_passed }}\n"}
    with pytest.MonkeyPatch.context() as mp:  # a new loader: jinja caches templates per loader
        mp.setattr(env, "loader", jinja2.ChoiceLoader([jinja2.DictLoader(throwaway), env.loader]))
        with pytest.raises(jinja2.UndefinedError, match="not_passed"):
            render("decode", "sm_90")
    assert "not_passed" not in render("decode", "sm_90").source


# --- zipgen gen ----------------------------------------------------------------------------------------


def test_gen_writes_every_default_source(tmp_path, capsys):
    tmp_path = tmp_path / "out"
    assert main(["gen", "--out", str(tmp_path)]) == 0
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    expected = {Path(arch, _default(op, arch).file_name) for op, arch in DEFAULT_CASES}
    assert written == expected
    for op, arch in DEFAULT_CASES:
        kernel = _default(op, arch)
        assert (tmp_path / arch / kernel.file_name).read_bytes() == kernel.source.encode()
    out = capsys.readouterr().out
    assert all(_default(op, arch).kernel_name in out for op, arch in DEFAULT_CASES)
    # A second run leaves identical files alone.
    assert main(["gen", "--out", str(tmp_path)]) == 0
    assert f"0 of {len(DEFAULT_CASES)} files written" in capsys.readouterr().out


def test_gen_cubin_writes_cubins_and_reports_cache_hits(tmp_path, capsys):
    tmp_path = tmp_path / "out"
    args = ["gen", "--arch", "sm_90", "--arch", "sm_90", "--out", str(tmp_path), "--cubin"]
    assert main(args) == 0
    first = capsys.readouterr().out
    for op in OPS:
        kernel = _default(op, "sm_90")
        cubin = (tmp_path / "sm_90" / (kernel.kernel_name + ".cubin")).read_bytes()
        assert cubin.startswith(b"\x7fELF") and cubin_sm(cubin) == 90
        assert (tmp_path / "sm_90" / kernel.file_name).is_file()
        assert kernel.kernel_name in first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm_90"]  # --arch deduplicated
    assert "compile ms" in first and "cache hit" in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert re.search(r"\byes\b", second) and not re.search(r"\bno\b", second)
    if _cuobjdump() is not None:
        assert "regs" in first and "local B" in first


@pytest.mark.parametrize("args, match", [
    (["--arch", "sm_99"], "unknown arch 'sm_99'; supported: sm_80"),
    (["--op", "nope"], "unknown op 'nope'"),
    (["--arch", "sm_90", "--arch", "sm_7", "--op", "decode"], "unknown arch 'sm_7'"),
])
def test_gen_unknown_arch_or_op_exits_2_and_writes_nothing(tmp_path, capsys, args, match):
    out = tmp_path / "out"
    assert main(["gen", *args, "--out", str(out)]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


def test_default_gemm_configs_are_valid_everywhere():
    """runtime.gemm's per-shape defaults must render for every arch and token count."""
    from zipgen.runtime.gemm import fused_config
    for m in (1, 8, 16, 32, 64, 256):
        for n, k in ((4096, 4096), (28672, 4096), (4096, 14336), (8192, 28672), (16, 64)):
            cfg = fused_config(m, n, k)
            for arch in ARCHES:
                assert not cfg.problems(ARCHES[arch]), (m, n, k, cfg)


def test_config_from_command_line_numbers():
    from zipgen.codegen import ZipGemmConfig
    assert ZipGemmConfig.from_numbers(["4", "4", "2", "4", "1", "2"]) == ZipGemmConfig(
        4, 4, 2, 4, True, 2)
    assert ZipGemmConfig.from_numbers(["8", "1"]) == ZipGemmConfig(8, 1)  # the rest: defaults
    assert DecodeConfig.from_numbers(["2", "4"]) == DecodeConfig(2, 4)


# --- the wgmma variant (sm_90a) ----------------------------------------------------------------


def test_wgmma_configs_are_valid_only_where_the_warpgroup_fits():
    from zipgen.codegen import ZipGemmConfig
    ok = ZipGemmConfig(8, 4, 1, 4, True, 1, True)
    assert not ok.problems(arch_traits("sm_90a")) and not ok.problems(arch_traits("sm_90"))
    assert any("needs an sm_90 GPU" in p for p in ok.problems(arch_traits("sm_89")))
    for bad in (ZipGemmConfig(8, 4, 1, 2, True, 1, True), ZipGemmConfig(8, 4, 1, 4, False, 1, True),
                ZipGemmConfig(8, 4, 1, 4, True, 2, True)):
        assert any("warpgroup" in p for p in bad.problems(arch_traits("sm_90a"))), bad
    assert ok.kernel_name(arch_traits("sm_90a")).endswith("_wg")
    # 128-byte swizzle atoms instead of 144-byte rows, plus 1 KiB to align them, plus the TMA's
    # two 8-byte mbarriers per K slice
    plain = ZipGemmConfig(8, 4, 1, 4, True, 1, False)
    assert ok.smem_bytes == plain.smem_bytes - 2 * 2 * 4 * 8 * 16 + 1024 + 2 * 16


def test_grouped_activation_strips_are_valid_only_on_the_staged_mma_sync_path():
    from zipgen.codegen import ZipGemmConfig
    ok = ZipGemmConfig(16, 2, 1, 4, True, 1, False, 4)
    assert not ok.problems(arch_traits("sm_80")) and not ok.problems(arch_traits("sm_90"))
    assert ok.kernel_name(arch_traits("sm_90")).endswith("_x4")
    one = ZipGemmConfig(16, 2, 1, 4, True, 1, False, 1)
    assert not one.kernel_name(arch_traits("sm_90")).endswith("_x1")
    # the double buffer holds 4 strips per half: 4 slices x 2 x 4 x 2 token tiles x 8 rows x 144
    assert ok.smem_bytes == one.smem_bytes + 4 * 2 * 3 * 2 * 8 * 144
    for bad, why in ((ZipGemmConfig(16, 2, 1, 4, False, 1, False, 2), "stage_x"),
                     (ZipGemmConfig(16, 4, 1, 4, True, 1, True, 2), "wgmma"),
                     (ZipGemmConfig(16, 2, 1, 4, True, 1, False, 3), "1, 2 or 4")):
        assert any(why in p for p in bad.problems(arch_traits("sm_90"))), bad
    # too much shared memory for the sm_86 / sm_89 opt-in limit
    assert any("shared memory" in p for p in
               ZipGemmConfig(16, 8, 1, 1, True, 1, False, 4).problems(arch_traits("sm_86")))


def test_wgmma_kernels_compile_to_warpgroup_mma():
    """The warpgroup's 4 k16 steps per strip are HGMMA instructions (3 code paths: loop body,
    its unrolled copy, the ragged strip), fenced and waited for; no ldmatrix."""
    tool = _cuobjdump()
    from cuda.pathfinder import find_nvidia_binary_utility
    if tool is None or find_nvidia_binary_utility("nvdisasm") is None:
        pytest.skip("cuobjdump / nvdisasm not found (pip install nvidia-cuda-cuobjdump "
                    "nvidia-cuda-nvdisasm)")
    from zipgen.codegen import ZipGemmConfig
    from zipgen.compile.sass import main_loop, sass_rows
    for cfg in (ZipGemmConfig(4, 4, 1, 4, True, 1, True), ZipGemmConfig(16, 1, 2, 4, True, 1, True)):
        ops = [op.lstrip("@") for _, op, _ in sass_rows(build_kernel("zipgemm", "sm_90a", cfg).cubin, tool)]
        assert sum(op.startswith("HGMMA") for op in ops) >= 8, cfg
        assert any(op.startswith("WARPGROUP.ARRIVE") for op in ops)
        assert any(op.startswith("WARPGROUP.DEPBAR") for op in ops)
        assert any(op.startswith("UTMALDG") for op in ops)  # activations through the TMA
        assert not any(op.startswith(("LDSM", "HMMA")) for op in ops)
        # ... so no proxy fence (MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC.S) waits for the stream
        # loads in flight each strip
        body = [op.lstrip("@") for _, op, _ in main_loop(sass_rows(
            build_kernel("zipgemm", "sm_90a", cfg).cubin, tool))]
        assert not any(op.startswith(("MEMBAR", "FENCE")) for op in body), cfg


def test_wgmma_kernels_are_built_for_sm_90a_only():
    """An sm_90 device runs a wgmma configuration from an sm_90a cubin: rendering, compiling,
    the tuner, bundles and the runtime all go through codegen.compile_arch."""
    from zipgen.codegen import ZipGemmConfig, compile_arch, render
    cfg = ZipGemmConfig(8, 4, 1, 4, True, 1, True)
    assert compile_arch("sm_90", cfg) == "sm_90a"
    assert compile_arch("sm_90", ZipGemmConfig()) == "sm_90"
    assert compile_arch("sm_80", cfg) == "sm_80"
    rendered = render("zipgemm", "sm_90", cfg)
    assert rendered.arch == "sm_90a" and "sm90a" in rendered.kernel_name
    with pytest.raises(InputError, match="needs an sm_90 GPU"):
        render("zipgemm", "sm_80", cfg)


def test_wgmma_kernels_are_not_serialized_by_ptxas():
    """ptxas serializes wgmmas (performance advisory C7515) when non-wgmma code touches their
    accumulators between issue and wait. Up to 32 tokens a strip's wgmmas stay in flight during
    the next strip's decode (not across the loop's back edge); from 64 each strip waits for its
    own. Both kinds are checked, with 1, 2, 4, 8 and 16 token tiles."""
    from zipgen.codegen import ZipGemmConfig, render
    from zipgen.codegen.build import include_dir
    from zipgen.compile.nvrtc import compile_cubin
    for cfg in (ZipGemmConfig(16, 1, 1, 4, True, 1, True), ZipGemmConfig(8, 2, 2, 4, True, 1, True),
                ZipGemmConfig(4, 4, 1, 4, True, 1, True), ZipGemmConfig(16, 8, 1, 4, True, 1, True),
                ZipGemmConfig(4, 16, 1, 4, True, 1, True)):  # m64n128: 64 accumulators
        rendered = render("zipgemm", "sm_90", cfg)
        log = compile_cubin(rendered.source, rendered.arch, options=("-Xptxas=-v",),
                            include_dirs=(include_dir(),)).log
        assert "Used" in log and "C7515" not in log and " 0 bytes spill stores" in log, log[-2000:]


def test_split_k_configs_names_grids_and_workspace():
    from zipgen.codegen import ZipGemmConfig, render
    cfg = ZipGemmConfig(16, 4, 1, 4, True, 1, True, 1, 3)
    assert not cfg.problems(arch_traits("sm_90"))
    assert cfg.kernel_name(arch_traits("sm_90a")).endswith("_wg_k3")
    assert cfg.grid(6144, 33) == (96, 2, 3)  # 64 rows, 32 tokens per CTA, 3 CTAs per tile
    assert cfg.split_k_sizes(6144, 33) == (96 * 2 * 3 * 64 * 32, 96 * 2)
    one = ZipGemmConfig(16, 4, 1, 4, True, 1, True)
    assert one.split_k_sizes(6144, 33) == (0, 0) and one.grid(6144, 33) == (96, 2, 1)
    assert "_k" not in one.kernel_name(arch_traits("sm_90a"))
    # the two pointers are parameters of split-K kernels only
    assert "workspace" in render("zipgemm", "sm_90", cfg).source
    assert "float* __restrict__ workspace" not in render("zipgemm", "sm_90", one).source
    assert any("k_splits=9" in p for p in ZipGemmConfig(k_splits=9).problems(arch_traits("sm_80")))
    assert not ZipGemmConfig(k_splits=8).problems(arch_traits("sm_80"))


@pytest.mark.parametrize("arch, cfg", [
    ("sm_80", (8, 1, 2, 1, False, 1, False, 1, 2)), ("sm_86", (8, 2, 1, 2, True, 1, False, 2, 4)),
    ("sm_89", (8, 4, 1, 2, True, 2, False, 1, 3)), ("sm_90", (16, 4, 1, 4, True, 1, True, 1, 2)),
    ("sm_90", (4, 16, 2, 4, True, 1, True, 1, 4))])
def test_split_k_kernels_compile_without_spills_and_count_tiles_atomically(arch, cfg):
    """Every arch and path; the tile's arrival counter is one global atomic per CTA, and the
    wgmma kernels stay unserialized (C7515) with it."""
    from zipgen.codegen import ZipGemmConfig, render
    from zipgen.codegen.build import include_dir
    from zipgen.compile.nvrtc import compile_cubin
    cfg = ZipGemmConfig(*cfg)
    assert not cfg.problems(arch_traits(arch))
    rendered = render("zipgemm", arch, cfg)
    built = compile_cubin(rendered.source, rendered.arch, options=("-Xptxas=-v",),
                          include_dirs=(include_dir(),))
    assert " 0 bytes spill stores" in built.log and "C7515" not in built.log, built.log[-2000:]
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    from zipgen.compile.sass import sass_rows
    ops = [op.lstrip("@") for _, op, _ in sass_rows(built.cubin, tool)]
    assert sum(op.startswith(("ATOMG.E.ADD", "ATOMG.ADD")) for op in ops) == 1, \
        sorted({op for op in ops if "ATOM" in op or "RED" in op})


def test_specialized_configs_names_and_shared_memory():
    from zipgen.codegen import ZipGemmConfig, render
    cfg = ZipGemmConfig(16, 4, 1, 4, True, 1, True, 1, 2, specialized=True)
    assert not cfg.problems(arch_traits("sm_90"))
    assert cfg.kernel_name(arch_traits("sm_90a")).endswith("_wg_k2_ws")
    assert cfg.stages == 8 and cfg.smem_bytes == 1024 + 8 * (32 * 128 + 4 * 32 * 80 + 16)
    assert cfg.grid(6144, 33) == (96, 2, 2)
    src = render("zipgemm", "sm_90", cfg).source
    assert "zipgemm_specialized<12, 4, 1, 2>" in src and "zipgemm_rows" not in src
    # what it needs, with every reason
    assert any("needs wgmma=True" in p for p in
               ZipGemmConfig(16, 4, 1, 4, True, 1, False, specialized=True).problems(arch_traits("sm_90")))
    assert any("8, 12, 16 or 20 warps" in p for p in
               ZipGemmConfig(4, 4, 1, 4, True, 1, True, specialized=True).problems(arch_traits("sm_90")))
    assert any("96 registers" in p for p in
               ZipGemmConfig(20, 16, 1, 4, True, 1, True, specialized=True).problems(arch_traits("sm_90")))
    assert any("warps_per_cta=12" in p for p in ZipGemmConfig(12).problems(arch_traits("sm_90")))


@pytest.mark.parametrize("cfg", [(8, 1, 1, 4, True, 1, True, 1, 1), (20, 2, 1, 4, True, 1, True, 1, 1),
                                 (16, 8, 2, 4, True, 1, True, 1, 2), (16, 16, 2, 4, True, 1, True, 1, 1),
                                 (12, 16, 1, 4, True, 1, True, 1, 3)])
def test_specialized_kernels_compile_without_spills_or_serialized_wgmmas(cfg):
    """The consumer warpgroup keeps a strip's wgmmas in flight while it issues the next (C7515
    would serialize them); 128 tokens with 16 warps issues one by one, within 128 registers."""
    from zipgen.codegen import ZipGemmConfig, render
    from zipgen.codegen.build import include_dir
    from zipgen.compile.nvrtc import compile_cubin
    cfg = ZipGemmConfig(*cfg, specialized=True)
    rendered = render("zipgemm", "sm_90", cfg)
    built = compile_cubin(rendered.source, rendered.arch, options=("-Xptxas=-v",),
                          include_dirs=(include_dir(),))
    assert " 0 bytes spill stores" in built.log and "C7515" not in built.log, built.log[-2000:]


def test_strip_pairs_configs_names_shared_memory_and_register_cap():
    from zipgen.codegen import ZipGemmConfig, render
    cfg = ZipGemmConfig(16, 1, 1, 1, strip_pairs=True)
    assert not cfg.problems(arch_traits("sm_80"))
    assert cfg.kernel_name(arch_traits("sm_80")).endswith("_w16_d1_p2")
    assert cfg.smem_bytes == 16 * 2 * 32 * 80  # two strips' slices per warp
    assert cfg.min_ctas == 2 and ZipGemmConfig(8, 1, 1, 2, strip_pairs=True).min_ctas == 4
    assert ZipGemmConfig(8, 1, 2, 2, strip_pairs=True).min_ctas is None  # depth 2: 80+ registers
    src = render("zipgemm", "sm_80", cfg).source
    assert "zipgemm_pairs<16, 1, 1, 1>" in src and "__launch_bounds__(512, 2)" in src
    assert "paired_kernel.cuh" in src and "zipgemm_rows" not in src
    # everything else renders as before: no launch-bounds minimum, no paired header
    plain = render("zipgemm", "sm_80", ZipGemmConfig(16, 1, 1, 1)).source
    assert "__launch_bounds__(512)" in plain and "paired_kernel" not in plain
    for other in (ZipGemmConfig(8, 1, 1, 1, row_strips=2, strip_pairs=True),
                  ZipGemmConfig(16, 4, 1, 4, True, 1, True, strip_pairs=True),
                  ZipGemmConfig(8, 1, 1, 1, strip_pairs=1)):
        assert any("strip_pairs" in p for p in other.problems(arch_traits("sm_90"))), other


def test_staged_strip_pairs_configs_shared_memory_arguments_and_arches():
    """Paired strips with activations staged per warp through the TMA: sm_90 only; two strips'
    boxes of the CTA's tokens per warp after the decode tiles; the tensor map as an argument."""
    from zipgen.codegen import ZipGemmConfig, render
    cfg = ZipGemmConfig(8, 1, 1, 1, True, strip_pairs=True)
    assert not cfg.problems(arch_traits("sm_90")) and cfg.takes_x_map
    for arch in ("sm_80", "sm_86", "sm_89"):
        assert any("TMA" in p for p in cfg.problems(arch_traits(arch))), arch
    assert cfg.kernel_name(arch_traits("sm_90")).endswith("_w8_d1_sx_p2")
    assert cfg.smem_bytes == 8 * 2 * 32 * 80 + 8 * 2 * 8 * 128
    # 16 warps: two CTAs per SM still (2 x (112 KB + 1 KB reserved) <= 228 KB)
    assert ZipGemmConfig(16, 1, 1, 1, True, strip_pairs=True).smem_bytes == 114688
    assert ZipGemmConfig(8, 4, 1, 1, True, strip_pairs=True).smem_bytes == 8 * 5120 + 8 * 8192
    src = render("zipgemm", "sm_90", cfg).source
    assert "zipgemm_pairs<8, 1, 1, 1, false, true>" in src and "TmaMap x_map" in src
    assert "&x_map" in src and "paired_kernel.cuh" in src
    gated = render("zipgemm", "sm_90", ZipGemmConfig(8, 1, 1, 2, True, strip_pairs=True,
                                                     silu_mul=True)).source
    assert "zipgemm_pairs<8, 2, 1, 1, true, true>" in gated
    # the direct paired kernel renders as before: no tensor map, no staging argument
    direct = ZipGemmConfig(8, 1, 1, 1, strip_pairs=True)
    assert not direct.takes_x_map
    src = render("zipgemm", "sm_90", direct).source
    assert "zipgemm_pairs<8, 1, 1, 1>" in src and "x_map" not in src.split("GemmArgs")[0]


def test_staged_strip_pairs_load_activations_through_the_tma():
    """The staged paired loop: per unit one TMA copy (two boxes, one UTMALDG after unrolling
    counts once per body) and 4 ldmatrix per token tile, instead of 16 global loads of the
    activations; the compressed stream's loads remain (NVRTC 13.5: 8 LDG per strip against 16)."""
    _, direct, n_direct = _sm90_main_loop((8, 1, 1, 1, False, 1, False, 1, 1, False, True))
    kernel, staged, n_staged = _sm90_main_loop((8, 1, 1, 1, True, 1, False, 1, 1, False, True))
    count = lambda body, op: sum(o.lstrip("@").startswith(op) for _, o, _ in body)  # noqa: E731
    assert count(staged, "LDSM") == 2 * n_staged
    assert count(staged, "UTMALDG") >= 1
    assert count(staged, "LDG") <= count(direct, "LDG") / n_direct * n_staged - 6 * n_staged
    assert count(staged, "HMMA") >= 4 * n_staged
    assert len(staged) / n_staged <= 206, (kernel.kernel_name, len(staged) / n_staged)


@pytest.mark.parametrize("arch, fields, stage_x", [
    *[(arch, fields, False) for arch in ("sm_80", "sm_86", "sm_89", "sm_90")
      for fields in [(8, 1, 1, 2), (16, 1, 1, 1), (4, 1, 1, 1), (8, 2, 1, 2), (16, 1, 3, 4)]],
    # staged through the TMA (sm_90): up to 4 token tiles (86 registers) without spills
    *[("sm_90", fields, True) for fields in [(8, 1, 1, 1), (16, 1, 1, 2), (4, 1, 1, 1),
                                             (8, 2, 2, 2), (4, 4, 1, 1), (16, 4, 2, 4)]]])
def test_strip_pairs_kernels_compile_without_spills(arch, fields, stage_x):
    """Depth 1 with one token tile within 64 registers (the cap keeps 32 warps per SM)."""
    from zipgen.codegen import ZipGemmConfig, render
    from zipgen.codegen.build import include_dir
    from zipgen.compile.nvrtc import compile_cubin
    cfg = ZipGemmConfig(*fields, stage_x, strip_pairs=True)
    rendered = render("zipgemm", arch, cfg)
    built = compile_cubin(rendered.source, rendered.arch, options=("-Xptxas=-v",),
                          include_dirs=(include_dir(),))
    assert " 0 bytes spill stores" in built.log and " 0 bytes stack frame" in built.log, \
        built.log[-2000:]
    if cfg.min_ctas:
        used = int(re.search(r"Used (\d+) registers", built.log).group(1))
        assert used <= 64, built.log[-2000:]


def test_strip_pairs_cut_the_main_loop():
    """Paired strips share the offsets, the entry-word load, the patch pass and the loop
    control: 190-192 static instructions per strip at depth 1 against 208-211 (NVRTC 13.5)."""
    for fields in [(8, 1, 1, 2), (16, 1, 1, 1), (4, 1, 1, 1)]:
        _, single, n_single = _sm90_main_loop(fields)
        kernel, paired, n_paired = _sm90_main_loop(fields + (False, 1, False, 1, 1, False, True))
        assert sum(op.lstrip("@").startswith("HMMA") for _, op, _ in paired) >= 4 * n_paired
        per_strip = len(paired) / n_paired
        assert per_strip <= 196 and per_strip < len(single) / n_single - 10, (
            kernel.kernel_name, per_strip, len(single) / n_single)

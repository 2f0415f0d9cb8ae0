"""Re-stamping the records of kernels a template change left as they were (zipgen.tune.restamp):
compiled from the old and the new templates, byte-identical cubins keep their records."""
from __future__ import annotations

import json
import shutil

import pytest

from zipgen.codegen import DecodeConfig, ZipGemmConfig, render
from zipgen.codegen.render import template_dir
from zipgen.compile.elf import kernel_sections
from zipgen.compile.nvrtc import compile_cubin
from zipgen.tune.record import Record
from zipgen.tune.restamp import KernelComparison, kernels_to_compare, main, restamp_file

from test_kernel_digest import _write
from test_tune_db import rec

PLAIN = ZipGemmConfig(8, 1, 1, 1)  # zipgemm_kernel.cuh: only comments change below
PAIRED = ZipGemmConfig(8, 1, 1, 1, strip_pairs=True)  # paired_kernel.cuh: its code changes
DECODER = DecodeConfig(4, 1)


def _trees(tmp_path):
    """(old, new) templates folders: new adds a comment to a header every kernel includes and
    changes one constant of the paired kernel."""
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(template_dir(), old)
    shutil.copytree(template_dir(), new)
    tcatbe = new / "include" / "zipgen" / "tcatbe.cuh"
    tcatbe.write_text("// a comment moves every line down\n" + tcatbe.read_text())
    paired = new / "include" / "zipgen" / "paired_kernel.cuh"
    text = paired.read_text()
    assert "constexpr int kWindowRecords = 55;" in text
    paired.write_text(text.replace("constexpr int kWindowRecords = 55;",
                                   "constexpr int kWindowRecords = 54;"))
    return old, new


def _stamped(compare, record, op_cfgs):
    """The record, stamped with the old templates' hash of its kernel(s)."""
    from zipgen.codegen.digest import combined_sha256
    digests = [compare.old_sha256(op, record.arch, cfg) for op, cfg in op_cfgs]
    record.env["kernel_sha256"] = digests[0] if len(digests) == 1 else combined_sha256(digests)
    return record


def test_unchanged_kernels_keep_their_records_and_changed_ones_go_stale(tmp_path):
    old, new = _trees(tmp_path)
    compare = KernelComparison(old, new)
    plain = _stamped(compare, rec(config=PLAIN.as_dict(), us=12.0), [("zipgemm", PLAIN)])
    paired = _stamped(compare, rec(config=PAIRED.as_dict(), us=11.0), [("zipgemm", PAIRED)])
    decoder = _stamped(compare, rec(op="decode", m=None, config=DECODER.as_dict()),
                       [("decode", DECODER)])
    detail = {"buckets": [1], "fused_us": [12.0], "decode_us": [30.0],
              "decode_config": DECODER.as_dict()}
    switch_plain = _stamped(compare, rec(op="switch", m=None, us=None, config={"fused_max_m": 1},
                                         detail={**detail, "fused_configs": [PLAIN.as_dict()]}),
                            [("decode", DECODER), ("zipgemm", PLAIN)])
    switch_paired = _stamped(compare, rec(op="switch", m=None, us=None,
                                          config={"fused_max_m": 1},
                                          detail={**detail, "fused_configs": [PAIRED.as_dict()]}),
                             [("decode", DECODER), ("zipgemm", PAIRED)])
    elsewhere = rec(config=PLAIN.as_dict(), m=8, us=13.0)  # stamped by some other tree
    elsewhere.env["kernel_sha256"] = "0" * 64
    path = tmp_path / "db" / "sm_90-X.jsonl"
    path.parent.mkdir()
    _write(path, [plain, paired, decoder, switch_plain, switch_paired, elsewhere])
    path.write_text(path.read_text() + "not json\n")  # kept verbatim

    # the kernels whose hash moved, compiled in two processes first (what the command does)
    records = [plain, paired, decoder, switch_plain, switch_paired, elsewhere]
    wanted = kernels_to_compare(compare, records)
    assert {(op, cfg) for op, _, cfg in wanted} == {("zipgemm", PLAIN), ("zipgemm", PAIRED),
                                                    ("decode", DECODER)}
    compare.compare_all(wanted, jobs=2)
    assert restamp_file(path, compare) == (3, 4)
    lines = path.read_text().splitlines()
    assert lines[-1] == "not json" and len(lines) == 7
    got = [Record.from_json(json.loads(line)) for line in lines[:6]]
    assert got[0].env["kernel_sha256"] == compare.new_sha256("zipgemm", "sm_90", PLAIN)
    assert got[0].env["kernel_sha256"] != plain.env["kernel_sha256"]  # the hash did move
    assert got[1].env == paired.env  # its code changed: stale, to be measured again
    assert got[2].env["kernel_sha256"] == compare.new_sha256("decode", "sm_90", DECODER)
    assert got[3].env != switch_plain.env and got[4].env == switch_paired.env
    assert got[5].env == elsewhere.env
    assert [r.median_us for r in got] == [12.0, 11.0, 10.0, None, None, 13.0]  # no time moves
    assert restamp_file(path, compare) == (0, 7)  # current now, or still changed


def test_the_command_line_needs_a_templates_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--from", str(tmp_path), str(tmp_path)])
    assert "not a templates folder" in capsys.readouterr().err
    db = tmp_path / "db"
    db.mkdir()
    plain = rec(config=PLAIN.as_dict())
    plain.env["kernel_sha256"] = "0" * 64  # measured with neither tree
    _write(db / "a.jsonl", [plain])
    assert main(["--from", str(template_dir()), str(db)]) == 0
    assert "0 records re-stamped, 1 left as they were" in capsys.readouterr().out


def test_kernels_whose_symbol_tables_alone_differ_are_the_same_code(tmp_path):
    """Static constexpr members of a helper become device globals named after its template
    arguments: the symbol table (and the parameter bank's symbol index) changes, not the code."""
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(template_dir(), old)
    shutil.copytree(template_dir(), new)
    header = new / "include" / "zipgen" / "zipgemm_kernel.cuh"
    text = header.read_text()
    enum = text[text.index("  enum : int {"):text.index("  };", text.index("  enum : int {")) + 5]
    members = "".join(f"  static constexpr int {line.strip().rstrip(',')};\n"
                      for line in enum.splitlines()[1:-1])
    header.write_text(text.replace(enum, members))
    cubins = []
    for root in (old, new):
        rendered = render("zipgemm", "sm_90", PLAIN, templates=root)
        cubins.append(compile_cubin(rendered.source, rendered.arch,
                                    include_dirs=(root / "include",)).cubin)
    assert cubins[0] != cubins[1]  # the globals are there
    name = rendered.kernel_name
    assert kernel_sections(cubins[0], name) == kernel_sections(cubins[1], name)
    compare = KernelComparison(old, new)
    assert compare.unchanged("zipgemm", "sm_90", PLAIN)

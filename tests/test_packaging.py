"""pyproject.toml ships every subpackage and every template (CPU only, no build needed)."""
from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setuptools_cfg() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_packages() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "zipgen").rglob("__init__.py")
            if "__pycache__" not in p.parts}


def test_every_subpackage_is_listed(setuptools_cfg):
    listed = set(setuptools_cfg["packages"])
    missing = sorted(_source_packages() - listed)
    assert not missing, (f"add {missing} to [tool.setuptools] packages in pyproject.toml, "
                         "or the wheel will not contain them")


def test_no_listed_package_is_missing_from_the_tree(setuptools_cfg):
    package_dir = setuptools_cfg.get("package-dir", {})
    for name in setuptools_cfg["packages"]:
        folder = ROOT / package_dir.get(name, name.replace(".", "/"))
        assert folder.is_dir(), f"pyproject.toml lists {name}, but {folder} does not exist"


def test_templates_ship_as_zipgen_templates(setuptools_cfg):
    assert "zipgen.templates" in setuptools_cfg["packages"]
    assert setuptools_cfg["package-dir"]["zipgen.templates"] == "templates"
    globs = setuptools_cfg["package-data"]["zipgen.templates"]
    templates = ROOT / "templates"
    shipped = {p for g in globs for p in templates.glob(g) if p.is_file()}
    present = {p for p in templates.rglob("*") if p.is_file() and p.suffix in (".j2", ".cuh")}
    assert present, "no templates found"
    unshipped = sorted(str(p.relative_to(ROOT)) for p in present - shipped)
    assert not unshipped, (f"{unshipped} match no [tool.setuptools.package-data] "
                           f"\"zipgen.templates\" glob ({globs}); the wheel would lack them")


def test_templates_are_found_outside_a_source_checkout(monkeypatch, tmp_path):
    """As in an installed wheel: no templates/ next to the package, so render.template_dir()
    falls back to the zipgen.templates package."""
    render_module = importlib.import_module("zipgen.codegen.render")
    monkeypatch.setattr(render_module, "_SOURCE_TREE_TEMPLATES", tmp_path / "no-checkout")
    folder = render_module.template_dir()
    assert (folder / "include" / "zipgen").is_dir()
    assert any(folder.glob("*.j2"))

"""The dependencies are honest: every package the library imports is declared in pyproject.toml
(not merely pulled in by another one), and every floor is the version constraints-min.txt pins,
which CI tests in a second environment (.ci/run)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# Imported only when installed, as an alternative to a declared package: runtime/compat.py
# takes `lightning` or the declared `pytorch-lightning`.
ALTERNATIVES = {"lightning"}
# One version in both CI environments (.ci/run installs torch==2.13.0 first).
NOT_PINNED = {"torch"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and extras, without the dev extra's tools."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    found = [Requirement(r) for r in project["dependencies"]]
    for name, reqs in extras.items():
        if name != "dev":
            found += [Requirement(r) for r in reqs if not r.startswith(project["name"])]
    return found


def imported_packages() -> dict[str, str]:
    """Top-level third-party module -> a file of the package that imports it."""
    out: dict[str, str] = {}
    for path in sorted((ROOT / "lightning_embproj").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "lightning_embproj":
                    out.setdefault(top, str(path.relative_to(ROOT)))
    return out


def test_every_imported_package_is_declared():
    declared = {canonical(r.name) for r in requirements()}
    owners = md.packages_distributions()
    missing = {}
    for module, where in imported_packages().items():
        dists = {canonical(d) for d in owners.get(module, [module])}
        if module not in ALTERNATIVES and not dists & declared:
            missing[module] = (sorted(dists), where)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_floor_is_the_version_ci_tests_at_the_bottom():
    pins = {}
    for line in (ROOT / "constraints-min.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = Version(version)
    for req in requirements():
        name = canonical(req.name)
        if name in NOT_PINNED:
            continue
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert len(floors) == 1, f"{req}: one >= floor expected"
        assert pins.get(name) == floors[0], (
            f"{req}: constraints-min.txt pins {name}=={pins.get(name)}, not the floor")
        assert pins[name] in req.specifier, req


def test_opentsne_is_held_below_its_next_major_version():
    (req,) = [r for r in requirements() if canonical(r.name) == "opentsne"]
    assert Version("2.0") not in req.specifier and Version("1.99") in req.specifier

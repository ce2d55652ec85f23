"""The README's quickstart runs as written, with only the packages the project declares.

Issue 16: the quickstart imported ``lightning.pytorch`` while ``pip install ".[all]"`` installs
``pytorch-lightning`` only, so it failed on a fresh venv. The code is read from README.md, so a
README that drifts breaks these tests; the run blocks every installed package that
``lightning-embproj[all]`` does not pull in (the dev extra's ``lightning`` among them), as a
fresh venv would lack them.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from digits import wandb_tables

from lightning_embproj import read_metrics, read_projections

README = Path(__file__).resolve().parents[2] / "README.md"
PACKAGE = "lightning-embproj"
# A venv has these before anything is installed.
VENV_BASE = {"pip", "setuptools"}


def quickstart() -> str:
    """The Python blocks of the README's Quickstart section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md has no ```python block under ## Quickstart"
    return "\n".join(blocks)


# Runs in the child process: the distributions `PACKAGE[extras]` pulls in, from the installed
# metadata, and an import hook that refuses top-level modules of any other distribution.
CLOSURE = '''
import importlib.metadata as md
import re

from packaging.requirements import Requirement


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root, extras):
    """Canonical names of ``root[extras]`` and of everything it requires, transitively."""
    seen, todo = {}, [(root, set(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonical(name)
        if key in seen and wanted <= seen[key]:
            continue
        seen.setdefault(key, set()).update(wanted)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for requirement in map(Requirement, requires):
            env = [{"extra": e} for e in (seen[key] or {""})]
            if requirement.marker is None or any(requirement.marker.evaluate(e) for e in env):
                todo.append((requirement.name, set(requirement.extras)))
    return set(seen)
'''

BLOCKER = CLOSURE + '''

import importlib.abc
import importlib.util
import json
import runpy
import sys

allowed = closure(sys.argv[1], ["all"]) | {canonical(n) for n in json.loads(sys.argv[2])}
owners = {module: {canonical(d) for d in dists}
          for module, dists in md.packages_distributions().items()}


def blocked(fullname):
    top = fullname.partition(".")[0]
    return top in owners and not owners[top] & allowed


class NotInstalled(importlib.abc.MetaPathFinder):
    """What a fresh venv with only the package's requirements would say on import."""

    def find_spec(self, fullname, path=None, target=None):
        if blocked(fullname):
            raise ModuleNotFoundError(f"No module named {fullname.partition('.')[0]!r}",
                                      name=fullname.partition(".")[0])
        return None


# ...and when asked whether a module exists (torch probes optional packages this way): None.
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if blocked(name) else _find_spec(name, package))
sys.meta_path.insert(0, NotInstalled())


# ...and when asked for a distribution's metadata (lightning_utilities' RequirementCache probes
# optional packages, e.g. torchmetrics' ``regex``, by version): not found.
def _refuse(from_name):
    def lookup(name):
        if canonical(name) not in allowed and canonical(name) in installed:
            raise md.PackageNotFoundError(name)
        return from_name(name)
    return lookup


installed = {canonical(d.metadata["Name"]) for d in md.distributions()}
md.Distribution.from_name = staticmethod(_refuse(md.Distribution.from_name))
names = runpy.run_path(sys.argv[3], run_name="__main__")
try:
    import lightning  # noqa: F401 - installed here by the dev extra, not by the package
    blocked = False
except ModuleNotFoundError:
    blocked = True
with open(sys.argv[4], "w", encoding="utf-8") as out:
    json.dump({"root": str(names["projector"].root), "points": len(names["points"]),
               "metrics": len(names["metrics"]), "lightning_blocked": blocked}, out)
'''


def test_the_quickstart_imports_only_what_pip_install_of_the_package_installs():
    namespace: dict = {}
    exec(CLOSURE, namespace)
    import importlib.metadata as md

    core = namespace["closure"](PACKAGE, [])
    owners = md.packages_distributions()
    imported = set()
    for node in ast.walk(ast.parse(quickstart())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.partition(".")[0])
    assert "lightning_embproj" in imported
    missing = {}
    for module in imported - {"lightning_embproj"} - set(sys.stdlib_module_names):
        dists = {namespace["canonical"](d) for d in owners.get(module, [])}
        if not dists & core:
            missing[module] = sorted(dists)
    assert not missing, (
        f"the README quickstart imports {missing} (module: installed by), which "
        f"`pip install {PACKAGE}` does not install")


@pytest.mark.slow
def test_the_quickstart_runs_as_written_with_only_the_declared_packages(
    tmp_path, wandb_offline
):
    """A real 3-epoch fit with W&B offline: files, metrics, W&B tables and the view."""
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart(), encoding="utf-8")
    runner = tmp_path / "runner.py"
    runner.write_text(BLOCKER, encoding="utf-8")
    result_file = tmp_path / "result.json"
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, str(runner), PACKAGE, json.dumps(sorted(VENV_BASE)), str(script),
         str(result_file)],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(result_file.read_text(encoding="utf-8"))
    assert result["lightning_blocked"]
    root = work / result["root"]
    assert root.parent.name == "demo"  # <save_dir>/<W&B project>/<run id>
    points = read_projections(root)
    # 3 epochs x the 297 validation digits, laid out by PCA and t-SNE, clustered
    assert result["points"] == len(points) == 3 * 297
    assert points.groupby("epoch").size().to_dict() == {0: 297, 1: 297, 2: 297}
    assert {"label", "cluster", "pca_x", "pca_y", "tsne_x", "tsne_y"} <= set(points.columns)
    assert result["metrics"] == len(read_metrics(root)) == 3
    assert len(wandb_tables(work, "embproj/embeddings")) == 3  # WandbLogger's save_dir "."
    assert glob.glob(str(root / "embproj" / "embeddings" / "view.html"))

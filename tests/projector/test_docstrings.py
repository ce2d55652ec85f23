"""Every docstring example in the package runs and gives what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import threading

import pytest

import lightning_embproj

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(lightning_embproj.__path__, "lightning_embproj.")
)


def test_the_package_has_modules_with_examples():
    finder = doctest.DocTestFinder()
    with_examples = [
        name for name in MODULES
        if any(t.examples for t in finder.find(importlib.import_module(name)))
    ]
    assert len(with_examples) >= 30, with_examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    """...and leave no worker thread behind (the fault tests count them)."""
    before = set(threading.enumerate())
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not [t for t in left if t.startswith("embproj")], left

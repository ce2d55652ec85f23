"""compat.py tells "Lightning is not installed" apart from "Lightning is installed but broken".

A broken install is the real one Lightning < 2.4 gives with setuptools >= 82: its package imports
``pkg_resources``, which is gone. Here a stand-in package on sys.path does exactly that import
while ``pkg_resources`` is made unimportable; compat.py is loaded afresh from its file each time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lightning_embproj.runtime import compat

PACKAGES = ("lightning", "pytorch_lightning")


class NotInstalled:
    """A meta-path finder that makes ``blocked`` packages unimportable, as if not installed."""

    def __init__(self, blocked: tuple[str, ...]) -> None:
        self.blocked = blocked

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


def load_compat(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *,
                absent: tuple[str, ...] = (), broken: tuple[str, ...] = ()) -> ModuleType:
    """A fresh compat module with ``absent`` packages missing and ``broken`` ones failing."""
    for name in list(sys.modules):
        if name.split(".")[0] in absent + broken:
            monkeypatch.delitem(sys.modules, name)
    for package in broken:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("import pkg_resources\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # setuptools >= 82
    monkeypatch.setattr(sys, "meta_path", [NotInstalled(absent), *sys.meta_path])
    spec = importlib.util.spec_from_file_location("compat_under_test", compat.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_not_installed_says_how_to_install(monkeypatch, tmp_path):
    with pytest.raises(ImportError, match="needs PyTorch Lightning: pip install") as info:
        load_compat(monkeypatch, tmp_path, absent=PACKAGES)
    assert "failed to import" not in str(info.value)


def test_broken_install_carries_the_real_cause(monkeypatch, tmp_path):
    with pytest.raises(ImportError) as info:
        load_compat(monkeypatch, tmp_path, absent=("pytorch_lightning",), broken=("lightning",))
    message = str(info.value)
    assert "lightning is installed but failed to import: ModuleNotFoundError" in message
    assert "pkg_resources" in message
    assert "upgrade it, pip install -U 'lightning>=2.4'" in message  # not "pip install it"
    assert "needs PyTorch Lightning" not in message
    cause = info.value.__cause__
    assert isinstance(cause, ModuleNotFoundError) and cause.name == "pkg_resources"


def test_both_broken_names_both(monkeypatch, tmp_path):
    with pytest.raises(ImportError) as info:
        load_compat(monkeypatch, tmp_path, broken=PACKAGES)
    assert str(info.value).count("is installed but failed to import") == 2
    assert "pytorch_lightning is installed" in str(info.value)


def test_one_broken_one_working_warns_and_goes_on(monkeypatch, tmp_path):
    with pytest.warns(UserWarning, match="pytorch_lightning is installed but failed to import.*"
                                         "pkg_resources"):
        module = load_compat(monkeypatch, tmp_path, broken=("pytorch_lightning",))
    import lightning.pytorch as L

    assert (L.Callback,) == module.CALLBACK_BASES

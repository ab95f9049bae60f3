"""Test-only stand-ins for packages ComfyUI imports at start-up but the tests never use.

Which ones and why: tests/comfyui_env.py (``STUBBED``) and each stub's docstring. A stand-in
package answers every submodule import (``torchvision.ops``, ``torchaudio.functional``, ...) and
every attribute with a placeholder, so ``from torchvision.ops import roi_align`` at the top of a
model file succeeds; calling or instantiating a placeholder raises and names the stub. The tests
put a stand-in on the path only when the real package can't be imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class Missing:
    """A name from a stubbed package: nested attributes are placeholders too; using it raises."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> "Missing":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Missing(f"{self._name}.{attr}")

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{self._name} is a test-only stand-in (tests/stubs); it is not available here")

    def __mro_entries__(self, bases: tuple) -> tuple:  # ``class X(torchvision.Foo)`` at import time
        return (_Unavailable,)

    def __repr__(self) -> str:
        return f"<stand-in {self._name}>"


class _Unavailable:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{type(self).__name__} needs a package that is a test-only stand-in here (tests/stubs)")


def _module_getattr(module_name: str):
    def __getattr__(attr: str) -> Missing:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Missing(f"{module_name}.{attr}")

    return __getattr__


class _Submodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.root + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _module_getattr(spec.name)  # type: ignore[attr-defined]
        return module

    def exec_module(self, module) -> None:
        pass


def stand_in(module_name: str) -> None:
    """Make the (already imported) package ``module_name`` a stand-in, submodules included."""
    module = sys.modules[module_name]
    module.__getattr__ = _module_getattr(module_name)  # type: ignore[attr-defined]
    if not any(isinstance(f, _Submodules) and f.root == module_name for f in sys.meta_path):
        sys.meta_path.append(_Submodules(module_name))

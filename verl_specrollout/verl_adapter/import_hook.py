"""Patch a vendor module right after it is imported, wherever and whenever that happens.

veRL builds its workers and trainer in many processes (the driver, Ray actors, vLLM workers),
each importing veRL modules at its own time, so we cannot patch "now". A meta-path finder wraps
the loader of the named modules; after the real loader has executed a module, every patch
registered for it runs once. A module already imported is patched on the spot. A failing patch
is logged (with what it switches off) and never breaks the import.

Several finders of this kind can coexist (another library's, or a second copy of ours after a
reload): each asks the others for the spec under a re-entrancy guard instead of recursing.
"""

from __future__ import annotations

import functools
import importlib.abc
import logging
import sys
import threading
from typing import Any, Callable, Dict, List

logger = logging.getLogger("verl_specrollout.import_hook")

Patch = Callable[[object], None]
_patches: Dict[str, List[Patch]] = {}


def _apply(name: str, module, patches: List[Patch]) -> None:
    for patch in patches:
        try:
            patch(module)
        except Exception:
            logger.warning("verl-specrollout: patch %s of %s failed; that feature is OFF",
                           getattr(patch, "__qualname__", patch), name, exc_info=True)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, name: str):
        self._inner, self._name = inner, name

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def __getattr__(self, item):  # get_source, get_code, is_package, ... of the real loader
        return getattr(self._inner, item)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _apply(self._name, module, list(_patches.get(self._name, ())))


class _Finder(importlib.abc.MetaPathFinder):
    _busy = threading.local()

    def find_spec(self, fullname, path, target=None):
        if fullname not in _patches or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, fullname)
        return spec


def patch_on_import(module_name: str, patch: Patch) -> None:
    """Run ``patch(module)`` once ``module_name`` is imported (now, if it already is).

    Patches must be idempotent (mark what they wrapped): a module imported again after a
    ``del sys.modules[...]`` is patched again.
    """
    todo = _patches.setdefault(module_name, [])
    if patch in todo:
        return
    todo.append(patch)
    if module_name in sys.modules:
        _apply(module_name, sys.modules[module_name], [patch])
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


WRAPPED_ATTR = "__specrollout_wrapped__"


def wrap_once(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> bool:
    """Replace ``owner.name`` by ``make_wrapper(original)`` unless it already is one of our wrappers
    (a module imported twice, or a second install). Returns whether it wrapped."""
    original = getattr(owner, name)
    if getattr(original, WRAPPED_ATTR, False):
        return False
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, WRAPPED_ATTR, True)
    setattr(owner, name, wrapper)
    return True

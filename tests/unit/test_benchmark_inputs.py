"""Benchmarks run on any model pair (--target / --draft / --prompts-file) and share one flag vocabulary
(benchmarks/common.py): the same flag means the same thing in every engine benchmark, old names still
parse, and every JSON carries its provenance. Parsing only: no engine starts."""

import argparse
import importlib
import json
import os
import re

import pytest

from benchmarks import common
from benchmarks.common import ModelPair, add_common_args, add_model_args, model_pair, read_prompts_file

ENGINE_BENCHMARKS = ("concurrency_sweep", "grpo_rollout", "group_draft", "k0_profile", "regime", "record_trace",
                     "draft_drift")


class Tok:
    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "|".join(m["content"] for m in messages) + ("<gen>" if add_generation_prompt else "")


def test_prompts_file_plain_and_jsonl(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\n" + json.dumps({"prompt": "second"}) + "\n"
                 + json.dumps({"messages": [{"role": "user", "content": "third"}]}) + "\n")
    assert read_prompts_file(str(f), Tok()) == ["first prompt", "second", "third<gen>"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SystemExit, match="no prompts"):
        read_prompts_file(str(tmp_path / "empty.txt"), Tok())


def test_own_pair_needs_a_draft_for_model_methods(tmp_path):
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="eagle3")
    add_model_args(ap)
    pair = model_pair(ap.parse_args(["--target", str(tmp_path), "--method", "draft_model", "--draft", "/d"]))
    assert isinstance(pair, ModelPair) and pair.target_dir == str(tmp_path) and pair.draft_for("draft_model") == "/d"
    assert pair.draft_for("ngram") is None
    no_draft = model_pair(ap.parse_args(["--target", str(tmp_path)]))
    with pytest.raises(SystemExit, match="--draft"):
        no_draft.draft_for("eagle3")


def _parse(name, argv):
    return importlib.import_module(f"benchmarks.{name}").parse_args(argv)


SHARED = ["--testbed", "tiny", "--dtype", "float32", "--out", "/tmp/x.json", "--no-plot", "--max-model-len", "1024",
          "--kv-cache-gb", "1.5", "--no-enforce-eager"]


@pytest.mark.parametrize("name", ENGINE_BENCHMARKS)
def test_shared_flags_parse_the_same_in_every_engine_benchmark(name):
    takes = vars(_parse(name, []))  # k0_profile times K=0 only (no --max-k); regime times --steps (no --max-tokens)
    argv = SHARED + (["--max-k", "3"] if "max_k" in takes else []) + (["--max-tokens", "16"] if "max_tokens" in takes else [])
    args = _parse(name, argv)
    assert (args.testbed, args.dtype, args.out, args.plot) == ("tiny", "float32", "/tmp/x.json", False)
    assert common.engine_settings(args) == {"max_model_len": 1024, "kv_cache_gb": 1.5, "enforce_eager": False}
    assert getattr(args, "max_k", 3) == 3 and getattr(args, "max_tokens", 16) == 16
    if hasattr(args, "batch_sizes"):
        assert _parse(name, ["--batch-sizes", "1,4"]).batch_sizes == "1,4"
    if hasattr(args, "repeats"):
        assert _parse(name, ["--repeats", "2"]).repeats == 2
    assert args.benchmark == name


@pytest.mark.parametrize("name", ENGINE_BENCHMARKS)
def test_defaults_and_deprecated_aliases(name, capsys):
    d = _parse(name, [])
    assert d.out is None and d.plot is True and common.engine_settings(d) == {}
    # the docs' recommended setting, except the two whose documented results are on the tiny testbed
    expect = ("tiny", "float32") if name in ("group_draft", "draft_drift") else ("regime", "bfloat16")
    assert (d.testbed, d.dtype) == expect
    old = ["--size", "medium"] + (["--k", "2"] if hasattr(d, "max_k") else [])
    if hasattr(d, "max_tokens"):
        old += ["--tokens", "8"]
    if hasattr(d, "batch_sizes"):
        old += ["--batches", "2,8"]
    args = _parse(name, old)
    assert args.testbed == "medium"
    assert not hasattr(d, "max_k") or args.max_k == 2
    assert not hasattr(d, "max_tokens") or args.max_tokens == 8
    assert not hasattr(d, "batch_sizes") or args.batch_sizes == "2,8"
    assert "--size is deprecated, use --testbed" in capsys.readouterr().err


def test_bad_values_get_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        _parse("concurrency_sweep", ["--testbed", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--batch-sizes: comma-separated integers"):
        common.int_list("1,x", "--batch-sizes")
    with pytest.raises(SystemExit, match="--ks .*K >= 1"):
        common.static_ks(argparse.Namespace(ks="0,2", max_k=4))
    assert common.static_ks(argparse.Namespace(ks=None, max_k=3)) == [1, 2, 3]


def test_out_and_plot_paths():
    ap = argparse.ArgumentParser()
    add_common_args(ap, "bench", engine=False)
    a = ap.parse_args([])
    assert common.out_path(a) == os.path.join(common.REPO, "results", "bench.json")
    assert common.plot_path(a) == os.path.join(common.REPO, "results", "bench.png")
    a = ap.parse_args(["--out", "/r/x.json", "--plot", "/p/t.png"])  # the older --plot PATH form
    assert common.plot_path(a) == "/p/t.png" and common.plot_path(a, ".timeline") == "/r/x.timeline.png"
    assert common.plot_path(ap.parse_args(["--no-plot"])) is None


def test_provenance_says_what_a_result_was_measured_with():
    class Testbed:
        size, recipe_hash = "tiny", "cb19b12f605d"

    ap = argparse.ArgumentParser()
    add_common_args(ap, "bench")
    args = ap.parse_args(["--dtype", "float32", "--kv-cache-gb", "4"])
    prov = common.provenance(args, ModelPair("/t", {"eagle3": "/e"}, None, Testbed()))
    assert {"dtype", "target", "drafts", "testbed", "testbed_cache_key", "engine", "versions", "git_commit",
            "host", "argv"} <= set(prov)
    assert (prov["dtype"], prov["target"], prov["drafts"]) == ("float32", "/t", {"eagle3": "/e"})
    assert (prov["testbed"], prov["testbed_cache_key"], prov["engine"]) == ("tiny", "cb19b12f605d", {"kv_cache_gb": 4.0})
    assert prov["versions"]["vllm"] and prov["versions"]["verl"] and prov["versions"]["torch"]
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"])
    assert prov["host"]["cpus"] == os.cpu_count()
    json.dumps(prov)  # goes into the JSON as it is

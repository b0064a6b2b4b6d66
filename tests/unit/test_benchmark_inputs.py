"""Benchmarks run on any model pair: --target / --draft / --prompts-file."""

import argparse
import json

import pytest

from benchmarks.common import ModelPair, add_model_args, model_pair, read_prompts_file


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
    ap.add_argument("--size", default="tiny")
    add_model_args(ap)
    pair = model_pair(ap.parse_args(["--target", str(tmp_path), "--method", "draft_model", "--draft", "/d"]))
    assert isinstance(pair, ModelPair) and pair.target_dir == str(tmp_path) and pair.draft_for("draft_model") == "/d"
    assert pair.draft_for("ngram") is None
    no_draft = model_pair(ap.parse_args(["--target", str(tmp_path)]))
    with pytest.raises(SystemExit, match="--draft"):
        no_draft.draft_for("eagle3")

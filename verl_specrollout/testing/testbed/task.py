"""Synthetic GSM8K-shaped arithmetic word problems with verifiable answers.

Every example is a short story ("tom has 3 apples . gets 5 more . they double .
how many now ?") and a worked solution whose steps are written with
random but meaning-preserving variations (fillers such as "so" / "then", operand order of
commutative operations, an optional "the answer is" sentence), ending in the GSM8K-style
final line ``#### <answer>``.  The variation gives the target model genuine entropy at T=1
inside the *response*, not only in the question.  The number of steps is drawn from a
truncated geometric distribution so response lengths have a long-ish tail.

Everything is a pure function of ``seed``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

DATA_SOURCE = "specrollout/arith"
ABILITY = "math"

NAMES = ["tom", "ann", "bob", "sue", "max", "eva", "sam", "lia", "ben", "kim"]
OBJECTS = ["apples", "pens", "cards", "coins", "books", "shells", "marbles", "stamps"]
ADD_VERBS = [("gets", "more"), ("finds", "more"), ("buys", "more")]
SUB_VERBS = [("gives", "away"), ("loses", None), ("sells", None)]
FILLERS = ["", "", "so", "then", "now", "next"]  # "" twice: no filler is the most likely
MAX_STEPS = 8
MAX_VALUE = 999

# Every word the task can produce (besides digits); the tokenizer is built from this list.
WORDS = sorted(
    set(NAMES + OBJECTS + [v for v, _ in ADD_VERBS] + [v for v, _ in SUB_VERBS]
        + ["more", "away", "has", "the", "double", "triple", "how", "many", "does", "have",
           "now", "they", "?", ".", "+", "-", "*", "=", "####", "so", "then", "next", "answer", "is",
           "solve", ":", "step", "by"])
)


@dataclass
class Example:
    question: str
    solution: str  # worked steps + "#### <answer>"
    answer: int
    num_steps: int
    index: int = 0
    meta: dict = field(default_factory=dict)


def _num_steps(rng: random.Random) -> int:
    # truncated geometric: P(k) ~ 0.65^(k-1), k = 1..MAX_STEPS
    k = 1
    while k < MAX_STEPS and rng.random() < 0.65:
        k += 1
    return k


def make_example(rng: random.Random, index: int = 0) -> Example:
    name = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    value = rng.randint(1, 20)
    sentences = [f"{name} has {value} {obj} ."]
    ops = []  # (op, operand)
    for _ in range(_num_steps(rng)):
        choices = ["add"]
        if value >= 2:
            choices.append("sub")
        if value * 3 <= MAX_VALUE:
            choices.append("mul")
        op = rng.choice(choices)
        if op == "add":
            b = rng.randint(1, min(30, MAX_VALUE - value))
            verb, tail = rng.choice(ADD_VERBS)
            sentences.append(f"{verb} {b} {tail} .")
            ops.append(("+", value, b, value + b))
            value += b
        elif op == "sub":
            b = rng.randint(1, min(30, value - 1))
            verb, tail = rng.choice(SUB_VERBS)
            sentences.append(f"{verb} {b}{' ' + tail if tail else ''} .")
            ops.append(("-", value, b, value - b))
            value -= b
        else:
            b = 2 if value * 3 > MAX_VALUE or rng.random() < 0.6 else 3
            sentences.append(f"they {'double' if b == 2 else 'triple'} .")
            ops.append(("*", value, b, value * b))
            value *= b
    sentences.append("how many now ?")
    question = " ".join(sentences)

    steps = []
    for op, a, b, c in ops:
        x, y = (b, a) if op in "+*" and rng.random() < 0.3 else (a, b)
        filler = rng.choice(FILLERS)
        steps.append(f"{filler + ' ' if filler else ''}{x} {op} {y} = {c} .")
    if rng.random() < 0.5:
        steps.append(f"so the answer is {value} .")
    steps.append(f"#### {value}")
    return Example(question=question, solution=" ".join(steps), answer=value,
                   num_steps=len(ops), index=index)


def make_examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [make_example(rng, i) for i in range(n)]


def prompt_messages(ex: Example) -> list[dict]:
    return [{"role": "user", "content": ex.question}]


def to_verl_row(ex: Example, split: str) -> dict:
    return {
        "data_source": DATA_SOURCE,
        "prompt": prompt_messages(ex),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": str(ex.answer)},
        "extra_info": {"split": split, "index": ex.index},
    }


def write_parquet(out_dir: str, n_train: int = 2048, n_test: int = 256, seed: int = 0) -> dict:
    """Write veRL RL-dataset parquet files ``train.parquet`` / ``test.parquet``."""
    import pandas as pd

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, n, s in (("train", n_train, seed + 1000), ("test", n_test, seed + 2000)):
        rows = [to_verl_row(ex, split) for ex in make_examples(n, s)]
        path = os.path.join(out_dir, f"{split}.parquet")
        pd.DataFrame(rows).to_parquet(path, index=False)
        paths[split] = path
    return paths

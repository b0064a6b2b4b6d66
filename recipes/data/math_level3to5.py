"""MATH levels 3-5 (the SimpleRL-Zoo 'level3to5' training split) and MATH-500, in veRL's format.

    python3 recipes/data/math_level3to5.py --local_save_dir ~/data/math_l3to5

Train: DigitalLearningGmbH/MATH-lighteval train split, Level 3/4/5 (~8.5k problems). Validation:
HuggingFaceH4/MATH-500. Both `data_source` values are scored by veRL's built-in MATH reward
(verl.utils.reward_score.math_reward, \\boxed{} answers), so no custom reward function is needed.
The prompt suffix is the one veRL's examples/data_preprocess/math_dataset.py uses.
"""

import argparse
import os

import datasets
from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
LEVELS = {"Level 3", "Level 4", "Level 5"}


def row(data_source, problem, answer, split, idx, level):
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": problem + " " + INSTRUCTION}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"split": split, "index": idx, "level": level},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local_save_dir", default="~/data/math_l3to5")
    args = ap.parse_args()
    out = os.path.expanduser(args.local_save_dir)
    os.makedirs(out, exist_ok=True)

    src = "DigitalLearningGmbH/MATH-lighteval"
    train = datasets.load_dataset(src, "default", split="train").filter(lambda ex: ex["level"] in LEVELS)
    train = train.map(
        lambda ex, i: row(src, ex["problem"], remove_boxed(last_boxed_only_string(ex["solution"])), "train", i, ex["level"]),
        with_indices=True, remove_columns=train.column_names)

    val_src = "HuggingFaceH4/MATH-500"
    test = datasets.load_dataset(val_src, split="test")
    test = test.map(
        lambda ex, i: row(val_src, ex["problem"], ex["answer"], "test", i, f"Level {ex['level']}"),
        with_indices=True, remove_columns=test.column_names)

    train.to_parquet(os.path.join(out, "train.parquet"))
    test.to_parquet(os.path.join(out, "test.parquet"))
    print(f"{len(train)} train / {len(test)} test rows -> {out}")


if __name__ == "__main__":
    main()

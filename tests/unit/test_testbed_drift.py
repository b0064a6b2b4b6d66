"""The shifted testbed task used to drift the target (benchmarks/draft_drift.py)."""
import pytest

from verl_specrollout.testing.testbed import task
from verl_specrollout.testing.testbed.drift import STYLES, make_shifted_examples, shift_solution
from verl_specrollout.testing.testbed.reward import compute_score
from verl_specrollout.testing.testbed.tokenizer import vocab_list


def test_shift_keeps_questions_and_answers_changes_format():
    orig = task.make_examples(50, seed=3)
    for style in STYLES:
        shifted = make_shifted_examples(50, seed=3, style=style)
        vocab = set(vocab_list())
        for o, s in zip(orig, shifted):
            assert s.question == o.question and s.answer == o.answer
            assert s.solution != o.solution
            assert compute_score(task.DATA_SOURCE, s.solution, str(s.answer)) == 1.0
            # only words the testbed tokenizer has (numbers are split into digits)
            assert all(w in vocab or w.isdigit() for w in s.solution.split())
    assert shift_solution("now 6 + 9 = 15 . so 15 * 2 = 30 . so the answer is 30 . #### 30") == \
        "step 1 : 15 = 6 + 9 . step 2 : 30 = 15 * 2 . so the answer is 30 . #### 30"
    assert shift_solution("then 12 * 3 = 36 . #### 36", "results_first") == "then 36 = 12 * 3 . #### 36"
    with pytest.raises(ValueError):
        shift_solution("1 + 1 = 2 . #### 2", "nope")

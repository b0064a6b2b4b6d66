"""Offline, deterministic, cached testbed: a synthetic reasoning task, a tiny Llama target
trained on it, an EAGLE-3 head and a small draft LM for it, all loadable by vLLM.

    from verl_specrollout.testing.testbed import build_testbed
    tb = build_testbed("tiny")          # cached under $SPECROLLOUT_CACHE/testbed/tiny-<hash>
    tb.target_dir, tb.eagle3_dir, tb.draft_lm_dir, tb.train_parquet

CLI: ``python -m verl_specrollout.testing.testbed --size tiny [--measure]``.
"""

from .cache import Testbed, build_testbed, cache_root, is_built, recipe_hash, testbed_dir  # noqa: F401
from .build import RECIPE_VERSION, get_recipe  # noqa: F401

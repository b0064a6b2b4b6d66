"""Content-addressed, lock-protected cache of built testbeds.

``${SPECROLLOUT_CACHE:-~/.cache/verl_specrollout}/testbed/<size>-<hash>`` where ``hash``
covers the whole recipe (hyperparameters + ``RECIPE_VERSION``).  A build runs under an
exclusive ``fcntl`` lock on ``<dir>.lock`` (a second process waits, then reuses the result)
and is written into a temp directory renamed into place at the end, so a crash never leaves
a half-written testbed behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from .build import build_into, get_recipe

READY = "READY"


@dataclass
class Testbed:
    root: str
    size: str
    tokenizer_dir: str
    target_dir: str
    eagle3_dir: str
    draft_lm_dir: str
    data_dir: str
    train_parquet: str
    test_parquet: str
    aux_layer_ids: list
    build_seconds: float
    recipe_hash: str
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def cache_root() -> str:
    base = os.environ.get("SPECROLLOUT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "verl_specrollout")
    return os.path.join(base, "testbed")


def recipe_hash(recipe: dict) -> str:
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def testbed_dir(size: str, recipe: dict | None = None) -> str:
    recipe = recipe or get_recipe(size)
    return os.path.join(cache_root(), f"{size}-{recipe_hash(recipe)}")


def _load(root: str, size: str, recipe: dict) -> Testbed:
    with open(os.path.join(root, "stats.json")) as f:
        stats = json.load(f)
    return Testbed(
        root=root, size=size,
        tokenizer_dir=os.path.join(root, "tokenizer"),
        target_dir=os.path.join(root, "target"),
        eagle3_dir=os.path.join(root, "eagle3"),
        draft_lm_dir=os.path.join(root, "draft_lm"),
        data_dir=os.path.join(root, "data"),
        train_parquet=os.path.join(root, "data", "train.parquet"),
        test_parquet=os.path.join(root, "data", "test.parquet"),
        aux_layer_ids=list(recipe["aux_layer_ids"]),
        build_seconds=float(stats.get("build_seconds", 0.0)),
        recipe_hash=recipe_hash(recipe),
        stats=stats,
    )


def is_built(size: str = "tiny", recipe: dict | None = None) -> bool:
    return os.path.exists(os.path.join(testbed_dir(size, recipe), READY))


def build_testbed(size: str = "tiny", *, recipe: dict | None = None, force: bool = False) -> Testbed:
    """Return the cached testbed of ``size``, building it first if its recipe is new."""
    recipe = recipe or get_recipe(size)
    root = testbed_dir(size, recipe)
    if not force and os.path.exists(os.path.join(root, READY)):
        return _load(root, size, recipe)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with open(root + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building: wait for it
        try:
            if not force and os.path.exists(os.path.join(root, READY)):
                return _load(root, size, recipe)
            # we hold the lock: any temp dir of this root is left over from a killed build
            parent, base = os.path.split(root)
            for name in os.listdir(parent):
                if name.startswith(base + ".tmp-") or name.startswith(base + ".old-"):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            tmp = f"{root}.tmp-{os.getpid()}-{int(time.time())}"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            try:
                build_into(tmp, recipe)
                with open(os.path.join(tmp, READY), "w") as f:
                    f.write(recipe_hash(recipe) + "\n")
                if os.path.exists(root):  # stale / forced: move aside, then replace
                    old = f"{root}.old-{os.getpid()}"
                    os.rename(root, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.rename(tmp, root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return _load(root, size, recipe)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

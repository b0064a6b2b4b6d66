"""A Hugging Face hub cache made on disk, for the tests that resolve hub ids offline."""

import shutil

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root, repo_id, src_dir):
    """A Hugging Face hub cache holding one snapshot of `repo_id` (refs/main -> snapshots/<commit>)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(src_dir, snap)
    return snap

"""Versioned draft checkpoints in vLLM's EAGLE-3 format.

Layout::

    <publish_dir>/v000012/        config.json + model.safetensors + specrollout_draft.json
    <publish_dir>/LATEST          "v000012\\n"

A version directory is written to a temp dir and renamed into place (save_vllm_checkpoint), then
LATEST is replaced atomically (temp file + fsync + os.replace), so a reader that follows LATEST
never sees a partial checkpoint.  The last ``keep`` versions are kept (never the one LATEST
names).  Multi-node: :func:`mirror_to_nodes` copies a version to every node's local dir with one
small Ray task per node (node-affinity); on a shared filesystem point publish_dir at it and skip
mirroring.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Optional

from verl_specrollout.draft.eagle3 import save_vllm_checkpoint

logger = logging.getLogger(__name__)

LATEST_NAME = "LATEST"  # read by read_latest below (rollout servers and the learner)
META_NAME = "specrollout_draft.json"


def version_name(version: int) -> str:
    return f"v{int(version):06d}"


def _atomic_write_text(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_latest(publish_dir: str) -> Optional[tuple]:
    """``(version, path)`` named by ``<publish_dir>/LATEST``, or None (nothing published yet,
    or a malformed or unreadable pointer, which is logged)."""
    path = os.path.join(publish_dir, LATEST_NAME)
    try:
        with open(path) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:  # LATEST a directory, publish_dir a file, unreadable: nothing to follow
        logger.warning("specrollout: cannot read %s: %r", path, exc)
        return None
    if not (name.startswith("v") and name[1:].isdigit()):
        logger.warning("specrollout: malformed %s: %r", path, name)
        return None
    return int(name[1:]), os.path.join(publish_dir, name)


def list_versions(publish_dir: str) -> list:
    if not os.path.isdir(publish_dir):
        return []
    out = []
    for n in os.listdir(publish_dir):
        if n.startswith("v") and n[1:].isdigit() and os.path.isfile(os.path.join(publish_dir, n, "config.json")):
            out.append(int(n[1:]))
    return sorted(out)


def read_meta(version_dir: str) -> dict:
    try:
        with open(os.path.join(version_dir, META_NAME)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class Publisher:
    def __init__(self, publish_dir: str, keep: int = 3, target_config=None):
        self.publish_dir = os.path.abspath(publish_dir)
        self.keep = max(1, int(keep))
        self.target_config = target_config
        os.makedirs(self.publish_dir, exist_ok=True)

    def latest_version(self) -> Optional[int]:
        lt = read_latest(self.publish_dir)
        return lt[0] if lt else None

    def newest_version(self) -> Optional[int]:
        """The highest version on disk: the one LATEST names, or a complete version directory
        a publish cut short before LATEST moved.  A new publish numbers above it, so a restarted
        learner never reuses (and overwrites) a version a rollout server may have loaded."""
        versions = list_versions(self.publish_dir)
        latest = self.latest_version()
        candidates = versions + ([latest] if latest is not None else [])
        return max(candidates) if candidates else None

    def publish(self, draft, version: int, meta: Optional[dict] = None) -> str:
        path = os.path.join(self.publish_dir, version_name(version))
        save_vllm_checkpoint(draft, path, self.target_config,
                             extra={"specrollout_version": int(version), **(meta or {})})
        _atomic_write_text(os.path.join(self.publish_dir, LATEST_NAME), version_name(version) + "\n")
        self.prune()
        return path

    def prune(self) -> None:
        latest = self.latest_version()
        versions = list_versions(self.publish_dir)
        for v in versions[:-self.keep]:
            if v != latest:
                shutil.rmtree(os.path.join(self.publish_dir, version_name(v)), ignore_errors=True)


# ----------------------------------------------------------------------------- multi-node

def _write_version_local(files: dict, local_dir: str, name: str) -> str:
    os.makedirs(local_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + name + "-", dir=local_dir)
    for fn, data in files.items():
        with open(os.path.join(tmp, fn), "wb") as f:
            f.write(data)
    dst = os.path.join(local_dir, name)
    if os.path.exists(dst):
        shutil.rmtree(tmp, ignore_errors=True)  # versions are immutable: already mirrored
    else:
        os.rename(tmp, dst)
    _atomic_write_text(os.path.join(local_dir, LATEST_NAME), name + "\n")
    return dst


def mirror_to_nodes(version_dir: str, local_dir: str, timeout: float = 120.0) -> list:
    """Copy one published version to ``local_dir`` on every alive Ray node (one task per node,
    ``NodeAffinitySchedulingStrategy(soft=False)``); the files travel once through the object
    store.  Returns the paths written.  Rollout servers then reload from their node's copy."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = os.path.basename(os.path.normpath(version_dir))
    files = {}
    for fn in os.listdir(version_dir):
        with open(os.path.join(version_dir, fn), "rb") as f:
            files[fn] = f.read()
    ref = ray.put(files)
    task = ray.remote(num_cpus=0)(_write_version_local)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(ref, local_dir, name) for n in ray.nodes() if n.get("Alive")]
    return ray.get(refs, timeout=timeout)

"""A model path as veRL takes it -> a local directory.

veRL's ``actor_rollout_ref.model.path`` may be a local directory, an ``hdfs://`` path or a Hugging
Face hub id: ``verl.utils.fs.copy_to_local`` copies an hdfs path into a local cache and returns any
other string unchanged, and transformers / vLLM resolve a hub id themselves when they load it. Code
that lists or reads files in the directory (the draft learner, the preflight check, the draft
checkpoint validation) needs the directory itself: :func:`resolve_model_dir` returns it, taking a
hub id from the Hugging Face cache (``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1`` from the cache only)
and downloading it otherwise, as ``huggingface_hub.snapshot_download`` does.

Import-light (the config imports this): huggingface_hub and veRL are imported only when a hub id or
an hdfs path is resolved.
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence

from verl_specrollout.errors import SpecRolloutConfigError

HDFS_PREFIX = "hdfs://"  # verl.utils.fs._HDFS_PREFIX
# huggingface_hub.utils.validate_repo_id: "name" or "namespace/name", [\w.-], at most 96 characters.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelPathError(SpecRolloutConfigError):
    """A model path that is no local directory and cannot be made one (one-line message)."""


def looks_like_hub_id(path: str) -> bool:
    """``org/name`` or ``name``: what the hub accepts as a repo id (a missing relative path may look alike)."""
    s = str(path)
    return (bool(_HUB_ID.match(s)) and len(s) <= 96 and ".." not in s and "--" not in s
            and not s.endswith((".", "-")))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now; huggingface_hub reads it once at import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def hub_cache_dir() -> str:
    """The Hugging Face hub cache as the environment names it now (huggingface_hub.constants' order)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub")


def resolve_model_dir(path_or_id: str, what: str = "model", *, allow_patterns: Optional[Sequence[str]] = None,
                      revision: Optional[str] = None) -> str:
    """The local directory of ``path_or_id`` (absolute); raises ModelPathError with one line naming ``what``.

    * a local directory: itself;
    * ``hdfs://...``: veRL's ``copy_to_local`` (its local copy);
    * a hub id (``Qwen/Qwen2.5-7B-Instruct``): its snapshot directory in the Hugging Face cache,
      downloaded first unless ``HF_HUB_OFFLINE`` is set. ``allow_patterns`` limits a download to
      some files (e.g. ``["*.json"]`` to read a config without fetching the weights).
    """
    s = str(path_or_id).strip() if path_or_id is not None else ""
    if not s:
        raise ModelPathError(f"{what}: empty model path")
    if s.startswith(HDFS_PREFIX):
        from verl.utils.fs import copy_to_local

        return os.path.abspath(copy_to_local(s.rstrip("/")))
    local = os.path.expanduser(s)
    if os.path.isdir(local):
        return os.path.abspath(local)
    if os.path.exists(local):
        raise ModelPathError(f"{what}: {s} is a file, not a model directory")
    if not looks_like_hub_id(s):
        raise ModelPathError(f"{what}: {s} is not a directory (nor a Hugging Face hub id such as "
                             "'Qwen/Qwen2.5-7B-Instruct')")
    return _hub_snapshot(s, what, allow_patterns, revision)


def _hub_snapshot(repo_id: str, what: str, allow_patterns, revision) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelPathError(f"{what}: {repo_id} is not a local directory, and huggingface_hub (to fetch it as a "
                             f"hub id) is not installed: {exc}") from exc
    offline, cache = hub_offline(), hub_cache_dir()
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                 allow_patterns=list(allow_patterns) if allow_patterns else None)
    except Exception as exc:  # the hub's errors are many (offline, 401/404, network); all end here
        if offline:
            raise ModelPathError(
                f"{what}: {repo_id} is not a local directory and not in the Hugging Face cache {cache} "
                f"(HF_HUB_OFFLINE is set, so nothing is downloaded); fetch it where there is network "
                f"(`huggingface-cli download {repo_id}`, same HF_HUB_CACHE) or pass a local directory") from exc
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelPathError(f"{what}: {repo_id} is not a local directory and could not be fetched from the "
                             f"Hugging Face hub into {cache} ({type(exc).__name__}: {reason})") from exc
    if not isinstance(path, str) or not os.path.isdir(path):
        raise ModelPathError(f"{what}: {repo_id} resolved to {path!r}, which is not a directory")
    return os.path.abspath(path)

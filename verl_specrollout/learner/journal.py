"""Captured batches the learner acknowledged, kept on disk until the replay buffer lets them go.

A learner process can die (OOM, node loss, preemption) and Ray restarts it from its saved state;
the state holds the draft and optimizer, not the replay buffer. So that no batch the learner
acknowledged (``add_batch`` returned) is lost with the process, each batch is written here before
``add_batch`` returns, and its file is deleted once the buffer has evicted every sample of it. A
restarted learner replays the files in arrival order into its buffer.

Cost: one safetensors write per shipped batch, in the learner's own process, off the trainer's
critical path; on disk at most the buffer's byte cap plus one batch. Format: safetensors (tensors
named ``<sample index>/<key>``) with the sample count in its metadata: nothing is unpickled on
replay, and a file that does not read is logged and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from typing import Iterator, Optional, Sequence

logger = logging.getLogger(__name__)

JOURNAL_DIR = "buffer"  # the journal's directory under the learner's state_dir
SUFFIX = ".safetensors"
META_KEY = "specrollout_batch"


def open_journal(directory: str) -> Optional["BatchJournal"]:
    """The batch journal, or None (logged) when its directory cannot be made: the learner then
    runs with an in-memory buffer only, as it would without a state dir."""
    try:
        return BatchJournal(directory)
    except OSError as exc:
        logger.error("specrollout learner: cannot keep a batch journal in %s (%r); acknowledged batches "
                     "are lost if the learner dies", directory, exc)
        return None


class BatchJournal:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._next = max(self._ids(), default=-1) + 1
        self._remaining: dict = {}  # batch id -> samples of it still in the buffer
        self.write_failures = 0
        self._lock = threading.Lock()  # add_batch calls run in several actor threads

    def _ids(self) -> list:
        out = []
        for name in os.listdir(self.directory):
            stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else ""
            if stem.startswith("b") and stem[1:].isdigit():
                out.append(int(stem[1:]))
        return sorted(out)

    def _path(self, batch_id: int) -> str:
        return os.path.join(self.directory, f"b{batch_id:010d}{SUFFIX}")

    def record(self, samples: Sequence[dict]) -> Optional[int]:
        """Write one batch atomically; returns its id (None: not written, logged and counted)."""
        from safetensors.torch import save_file

        with self._lock:
            batch_id = self._next
            self._next += 1
        tensors = {f"{i}/{k}": v.contiguous() for i, s in enumerate(samples) for k, v in s.items()}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-batch-", dir=self.directory)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={META_KEY: json.dumps({"samples": len(samples)})})
            os.replace(tmp, self._path(batch_id))
        except Exception as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            self.write_failures += 1
            if self.write_failures == 1:
                logger.error("specrollout learner: cannot journal captured batches in %s (%r); they stay in "
                             "memory only and are lost if the learner dies", self.directory, exc)
            return None
        with self._lock:
            self._remaining[batch_id] = len(samples)
        return batch_id

    def released(self, batch_id: Optional[int]) -> None:
        """One sample of ``batch_id`` left the buffer; the file goes with the last one."""
        with self._lock:
            if batch_id is None or batch_id not in self._remaining:
                return
            self._remaining[batch_id] -= 1
            if self._remaining[batch_id] > 0:
                return
            del self._remaining[batch_id]
        try:
            os.unlink(self._path(batch_id))
        except FileNotFoundError:
            pass

    def replay(self) -> Iterator[tuple]:
        """(batch id, samples) of every journaled batch, oldest first."""
        from safetensors import safe_open

        for batch_id in self._ids():
            path = self._path(batch_id)
            try:
                with safe_open(path, framework="pt") as f:
                    n = int(json.loads(f.metadata()[META_KEY])["samples"])
                    samples = [dict() for _ in range(n)]
                    for name in f.keys():
                        i, _, key = name.partition("/")
                        samples[int(i)][key] = f.get_tensor(name)
            except Exception as exc:
                logger.warning("specrollout learner: skipping unreadable journaled batch %s: %r", path, exc)
                continue
            with self._lock:
                self._remaining[batch_id] = len(samples)
            yield batch_id, samples

    def restore_into(self, buffer) -> int:
        """Put the batches acknowledged before a restart back into ``buffer`` (a ReplayBuffer whose
        evictions call :meth:`released`), oldest first; returns the samples restored."""
        batches = samples = 0
        for batch_id, got in self.replay():
            batches += 1
            samples += len(got)
            for s in got:
                buffer.add(s, tag=batch_id)
        if batches:
            logger.warning("specrollout learner: %d acknowledged batches (%d samples) restored into the replay "
                           "buffer from %s", batches, samples, self.directory)
        return samples

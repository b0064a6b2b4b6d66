"""Per-sample log-probs in veRL's own rollout dump (``trainer.rollout_data_dir``).

veRL 0.9.1 already dumps every training rollout, one JSON line per sample, to
``<trainer.rollout_data_dir>/<step>.jsonl`` (``_log_rollout_data`` -> ``_write_generations`` in both
the legacy and the V1 trainer): prompt and response text, ``score`` (the reward) and every per-sample
entry of ``reward_extra_infos_dict``. It does not dump log-probs. Importing this module (listed
in ``VERL_USE_EXTERNAL_MODULES``, which ``import verl`` reads in every process; the e2e driver
does that when asked for a dump, see ``grpo_cpu.run(rollout_data_dir=...)``) adds, through that
same dict, per sample:

* ``response_tokens``: number of response tokens (``response_mask`` sum);
* ``old_logprob_mean`` / ``old_logprob_sum``: the actor's recomputed log-prob of the sampled
  response (``old_log_probs``, i.e. the policy that generated the rollout), mean / sum over
  response tokens;
* with ``actor_rollout_ref.rollout.calculate_log_probs=True`` (veRL's default):
  ``rollout_logprob_mean`` (the log-probs vLLM returned with the tokens) and
  ``rollout_logprob_absdiff_max`` / ``_mean``: max / mean over response tokens of
  ``|rollout_log_probs - old_log_probs|``.

Only the dumped copy of the dict gets these keys (the batch, the metrics and training are left
alone), and nothing happens unless ``trainer.rollout_data_dir`` is set. Used by
``tests/integration/test_lossless_training.py``.
"""

from __future__ import annotations

import logging

from verl_specrollout import compat
from verl_specrollout.verl_adapter.import_hook import patch_on_import, wrap_once

logger = logging.getLogger("verl_specrollout.rollout_dump")



def per_sample_fields(batch) -> dict[str, list]:
    """Per-sample log-prob summaries of a veRL training batch (after compute_log_prob)."""
    import torch

    tensors = batch.batch
    mask = tensors["response_mask"].to(torch.float64)
    n_tok = mask.sum(-1)
    denom = n_tok.clamp_min(1.0)
    out: dict[str, list] = {"response_tokens": n_tok.long().tolist()}
    if "old_log_probs" in tensors.keys():
        old = tensors["old_log_probs"].to(torch.float64) * mask
        out["old_logprob_sum"] = old.sum(-1).tolist()
        out["old_logprob_mean"] = (old.sum(-1) / denom).tolist()
        if "rollout_log_probs" in tensors.keys():
            roll = tensors["rollout_log_probs"].to(torch.float64) * mask
            diff = (roll - old).abs()
            out["rollout_logprob_mean"] = (roll.sum(-1) / denom).tolist()
            out["rollout_logprob_absdiff_max"] = diff.max(-1).values.tolist()
            out["rollout_logprob_absdiff_mean"] = (diff.sum(-1) / denom).tolist()
    return out


def patch_trainer(module) -> None:
    def make(log_rollout_data):
        def wrapper(self, batch, reward_extra_infos_dict, *args, **kwargs):
            extra = reward_extra_infos_dict
            try:
                extra = {**(reward_extra_infos_dict or {}), **per_sample_fields(batch)}
            except Exception:  # a dump must never stop training
                logger.warning("verl-specrollout: per-sample log-probs not dumped", exc_info=True)
            return log_rollout_data(self, batch, extra, *args, **kwargs)
        return wrapper

    wrap_once(getattr(module, compat.VERL_TRAINER_CLASS), compat.VERL_TRAINER_LOG_ROLLOUT_DATA, make)


def _v1_fields(batch) -> dict:
    """Per-sample fields of a V1 batch (TransferQueue metadata), by TransferQueue key."""
    import transfer_queue as tq
    from verl import DataProto

    want = ["response_mask", "old_log_probs", "rollout_log_probs"]
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=want)
    fields = per_sample_fields(DataProto(batch=data.to_padded_tensor()))
    return {key: {name: values[i] for name, values in fields.items()} for i, key in enumerate(batch.keys)}


def patch_v1_trainer(module) -> None:
    """V1 dumps from TransferQueue with the samples re-ordered and their keys listed under ``uid``
    (``PPOTrainer._log_rollout_data`` -> ``_dump_generations``): our fields are read by key before
    the dump and joined on ``uid``."""
    cls = getattr(module, compat.VERL_V1_TRAINER_CLASS)

    def make_log(log_rollout_data):
        def wrapper(self, batch, *args, **kwargs):
            try:
                self._sr_dump_fields = _v1_fields(batch)
            except Exception:  # a dump must never stop training
                self._sr_dump_fields = None
                logger.warning("verl-specrollout: per-sample log-probs not dumped", exc_info=True)
            try:
                return log_rollout_data(self, batch, *args, **kwargs)
            finally:
                self._sr_dump_fields = None
        return wrapper

    def make_dump(dump_generations):
        def wrapper(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path):
            by_key = getattr(self, "_sr_dump_fields", None)
            keys = (reward_extra_infos_dict or {}).get("uid")
            if by_key and keys and all(k in by_key for k in keys):
                extra = dict(reward_extra_infos_dict)
                for name in by_key[keys[0]]:
                    extra[name] = [by_key[k][name] for k in keys]
                reward_extra_infos_dict = extra
            return dump_generations(self, inputs, outputs, gts, scores, reward_extra_infos_dict, dump_path)
        return wrapper

    wrap_once(cls, compat.VERL_TRAINER_LOG_ROLLOUT_DATA, make_log)
    wrap_once(cls, compat.VERL_V1_TRAINER_DUMP_GENERATIONS, make_dump)


def install() -> None:
    patch_on_import(compat.VERL_TRAINER_MODULE, patch_trainer)
    patch_on_import(compat.VERL_V1_TRAINER_MODULE, patch_v1_trainer)


install()

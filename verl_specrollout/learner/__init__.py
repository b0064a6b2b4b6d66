"""Online draft learning, one job per module:

* actor.py     ``SpecLearner``: the training loop (buffer -> trainer -> publish), plain Python
* trainer.py   ``DraftTrainer``: optimizer steps on the one EAGLE-3 loss (draft/eagle3.py)
* buffer.py    the byte-capped replay buffer and the held-out split
* publisher.py versioned draft checkpoints in vLLM's EAGLE-3 format, ``LATEST``
* state.py     the learner state file: save, resume, refuse what it cannot read
* journal.py   acknowledged batches on disk until the buffer evicts them
* remote.py    the Ray actor, its callers' ``TrainCalls``, naming and identity of one job's learner
* failures.py  counting repeated failures, logging the first of each run
"""

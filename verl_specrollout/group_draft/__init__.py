"""Free drafts from a GRPO group: siblings' tokens, earlier rollouts of the same prompt, the prompt
(index.py), and the per-request choice between them and the draft model (choice.py). Plain Python
and numpy; no torch or vLLM imports."""

from verl_specrollout.group_draft.choice import MODEL, SourceChooser
from verl_specrollout.group_draft.index import SOURCES, GroupSuffixIndex, SuffixDraft

__all__ = ["MODEL", "SOURCES", "GroupSuffixIndex", "SourceChooser", "SuffixDraft"]

"""Decoupled speculation: drafters away from the verifier draft ahead for its requests.

Import-light (numpy only): the protocol (``tails``, ``board``) runs in vLLM's engine process, in a
drafter process and in tests alike.
"""

from verl_specrollout.decoupled.board import TailBoard, Taken
from verl_specrollout.decoupled.tails import Tail, fingerprint

__all__ = ["Tail", "TailBoard", "Taken", "fingerprint"]

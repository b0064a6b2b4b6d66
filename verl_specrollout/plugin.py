"""The `verl.plugins` entry point target.

veRL 0.9.1 only `load()`s each entry point (imports it, never calls it), so
registration happens as a side effect of importing this module. Keep it tiny.
"""

from verl_specrollout import register

register()

"""python -m verl_specrollout.config --markdown: print the generated key reference."""

import sys

from verl_specrollout.config.docs import main

sys.exit(main())

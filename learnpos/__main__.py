"""`python -m learnpos ...` = the `learnpos` command (and what `torchrun -m learnpos` starts)."""

import sys

from learnpos.cli import main

sys.exit(main())

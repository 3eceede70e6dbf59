import sys

from learnpos.cli import main

sys.exit(main())

"""``python -m onepixel``: the command line (:mod:`onepixel.cli`)."""

import sys

from onepixel.cli import main

sys.exit(main())

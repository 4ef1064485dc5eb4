import sys

from onepixel.cli import main

sys.exit(main())

"""`python -m lmc.cli ...`: what `lmc sweep` runs for each point."""

import sys

from lmc.cli import main

sys.exit(main())

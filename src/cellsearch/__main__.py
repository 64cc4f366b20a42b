"""`python -m cellsearch ...`, the same as the `cellsearch` command."""

import sys

from cellsearch.cli import main

sys.exit(main())

import sys

from cellsearch.cli import main

sys.exit(main())

"""`python -m zipgen ...`: the zipgen CLI without its console script on PATH."""
import sys

from zipgen.cli.main import main

sys.exit(main())

"""``python -m certevo``: the ``certevo`` command."""

import sys

from certevo.search.cli import main

if __name__ == "__main__":
    sys.exit(main())

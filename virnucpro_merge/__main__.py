"""``python -m virnucpro_merge``: the same as the ``virnucpro-merge`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # (not when a worker process started by "spawn" imports it)
    sys.exit(main())

"""``python -m virnucpro_merge``: the same as the ``virnucpro-merge`` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m shardws`` is the ``shardws`` command."""

import sys

from shardws.cli import main

sys.exit(main())

"""``python -m gainsearch`` runs the CLI."""

import sys

from gainsearch.cli import main

sys.exit(main())

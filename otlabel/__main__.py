"""``python -m otlabel`` runs the ``otlabel`` command."""

import sys

from .cli import main

sys.exit(main())

"""``python -m otlabel.compile``: :func:`otlabel.compile.main`."""

from . import main

raise SystemExit(main())

"""``python -m edge_app`` == ``wbc-counter``."""

import sys

from edge_app.cli import main

sys.exit(main())

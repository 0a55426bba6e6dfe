"""``python -m api``: serve the REST API (settings from the environment; see api.settings)."""

import sys

from api.server import main

sys.exit(main())

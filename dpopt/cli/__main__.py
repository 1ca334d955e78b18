"""``python -m dpopt.cli``: how ``--workers`` starts its worker processes."""
import sys

from . import main

sys.exit(main())

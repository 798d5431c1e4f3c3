"""`python -m tlsweep.manual [--check]`: rewrite the manual's stale generated parts, or name them and exit 1."""
import sys

from .pages import main

sys.exit(main())

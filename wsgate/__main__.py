"""`python -m wsgate`: the same as the `wsgate` command."""

import sys

from .cli import main

sys.exit(main())

"""Sphinx configuration: furo, pages in MyST Markdown, the references generated from the code (_ext/wsgate_refs.py).

`make docs` builds the site with warnings as errors: `sphinx-build -W --keep-going -b html docs docs/_build/html`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

from wsgate import __version__  # noqa: E402

project = "wsgate"
author = "the wsgate authors"
copyright = "the wsgate authors, MIT licence"  # noqa: A001 - Sphinx's name
release = version = __version__

extensions = ["myst_parser", "wsgate_refs"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 4  # links like [x](protocol.md#presence) resolve, as on a forge
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"wsgate {release}"

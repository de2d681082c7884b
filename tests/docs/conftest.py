"""The guide's generators live beside the pages they make (docs/gen), outside the package: import them from there."""

from __future__ import annotations

import sys
from pathlib import Path

GENERATORS = Path(__file__).resolve().parents[2] / "docs" / "gen"
if str(GENERATORS) not in sys.path:
    sys.path.insert(0, str(GENERATORS))

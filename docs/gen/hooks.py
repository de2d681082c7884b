"""MkDocs hook: the guide's generated pages, made from the code at every build and never stored in docs/.

* `reference/settings.md` — every setting and option (`settings_reference.render`).
* `assets/figures/*.png` — the figures `figures.write_figures` draws (the pipeline, the gate's schedule, teacher vs
  student attention, an audit), computed once per process: `mkdocs serve` reuses them across rebuilds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import figures
import settings_reference
from mkdocs.structure.files import File, Files

FIGURE_DIR = "assets/figures"
_figures_made: dict[str, Path] = {}
_scratch: list[tempfile.TemporaryDirectory] = []


def _figures() -> dict[str, Path]:
    if not _figures_made:
        scratch = tempfile.TemporaryDirectory(prefix="lavit-guide-figures-")
        _scratch.append(scratch)  # kept for the process: the build copies the PNGs from here
        _figures_made.update(figures.write_figures(Path(scratch.name)))
    return _figures_made


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "reference/settings.md", content=settings_reference.render()))
    for name, path in _figures().items():
        files.append(File.generated(config, f"{FIGURE_DIR}/{name}", abs_src_path=str(path)))
    return files

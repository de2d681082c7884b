"""The paper's benchmarks, read from their published files (DESIGN §3).

Names: `mmvp`, `blink:<Task>` (any BLINK sub-task directory, val split), `vstar` (V* direct
attributes; `vstar:relative_position` for the other category), `mmstar`. Documented label errors (only MMVP has any) are
in `label_fixes`, applied only when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lavit.eval.benchmarks import blink, label_fixes, mmstar, mmvp, vstar
from lavit.eval.items import EvalItem


@dataclass
class Benchmark:
    name: str
    load: Callable[[Path], list[EvalItem]]
    summary: Callable[[list[dict], str], dict]  # extra summary fields from the scored records, their intervals
    # by the method named
    label_fixes: tuple[label_fixes.LabelFix, ...] = ()  # documented label errors, applied only when asked


def _no_extra(records: list[dict], interval: str) -> dict:
    return {}


def get_benchmark(name: str) -> Benchmark:
    base, _, sub = name.partition(":")
    if base == "mmvp" and not sub:
        return Benchmark(name, mmvp.load, mmvp.summary, label_fixes.MMVP)
    if base == "blink":
        if not sub:
            raise ValueError("BLINK needs a sub-task: blink:<Task>, e.g. blink:Relative_Depth")
        return Benchmark(name, lambda root: blink.load(root, sub), _no_extra)
    if base == "vstar":
        category = sub or "direct_attributes"
        return Benchmark(name, lambda root: vstar.load(root, category), _no_extra)
    if base == "mmstar" and not sub:
        return Benchmark(name, mmstar.load, mmstar.summary)
    raise ValueError(f"unknown benchmark {name!r}; known: mmvp, blink:<Task>, vstar[:category], mmstar")


# Table 1 of the paper, in its column order: (column label, benchmark name, directory under --data-root).
PAPER_SUITE = [
    ("MMVP", "mmvp", "MMVP"),
    ("V* Attr.", "vstar", "vstar_bench"),
    ("Rel. Depth", "blink:Relative_Depth", "BLINK"),
    ("IQ-Test", "blink:IQ_Test", "BLINK"),
    ("Rel. Ref.", "blink:Relative_Reflectance", "BLINK"),
    ("Spatial", "blink:Spatial_Relation", "BLINK"),
    ("MMStar", "mmstar", "MMStar"),
]

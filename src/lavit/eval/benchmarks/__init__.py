"""The paper's benchmarks, read from their published files (DESIGN §3).

Names: `mmvp`, `blink:<Task>` (any BLINK sub-task directory, val split), `vstar` (the evaluation protocol's V*
item set: the direct attributes for `lavit` and `lmms-eval`, all of V* for `authors`; `vstar:direct_attributes`,
`vstar:relative_position` and `vstar:all` name one explicitly), `mmstar`. Documented label errors (only MMVP has
any) are in `label_fixes`, applied only when asked. `Benchmark.files(root)` lists the data files (and MMVP's image
folder) a load needs; the files are fingerprinted with a run, images per item.
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
    files: Callable[[Path], list[Path]]  # the data files (and image folder) `load` reads under the benchmark's root
    label_fixes: tuple[label_fixes.LabelFix, ...] = ()  # documented label errors, applied only when asked

    @property
    def base(self) -> str:
        """'mmvp', 'blink', 'vstar' or 'mmstar': what a protocol's rules are keyed by."""
        return self.name.partition(":")[0]


def _no_extra(records: list[dict], interval: str) -> dict:
    return {}


def get_benchmark(name: str, vstar_items: str = "direct_attributes") -> Benchmark:
    """The benchmark `name` names; a bare `vstar` reads the category `vstar_items` (the protocol's V* item set)."""
    base, _, sub = name.partition(":")
    if base == "mmvp" and not sub:
        return Benchmark(name, mmvp.load, mmvp.summary, lambda root: [root / "Questions.csv", root / mmvp.IMAGES],
                         label_fixes.MMVP)
    if base == "blink":
        if not sub:
            raise ValueError("BLINK needs a sub-task: blink:<Task>, e.g. blink:Relative_Depth")
        return Benchmark(name, lambda root: blink.load(root, sub), _no_extra,
                         lambda root: sorted((root / sub).glob("val-*.parquet")))
    if base == "vstar":
        category = sub or vstar_items
        return Benchmark(name, lambda root: vstar.load(root, category), vstar.summary,
                         lambda root: [root / "test_questions.jsonl"])
    if base == "mmstar" and not sub:
        return Benchmark(name, mmstar.load, mmstar.summary, lambda root: [root / "mmstar.parquet"])
    raise ValueError(f"unknown benchmark {name!r}; known: mmvp, blink:<Task>, vstar[:category|all], mmstar")


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

"""`lavit bench dataset`: host memory of the training set, each variant measured in a fresh interpreter."""

from __future__ import annotations

import json

from lavit.cli import main

MIB = 2**20


def test_the_training_set_costs_about_its_parquet_size_and_workers_share_it(capsys):
    rows = 600
    assert main(["bench", "dataset", "--json", "--rows", str(rows), "--teacher-dim", "5120",
                 "--traj-cells", "1280"]) == 0
    result = json.loads(capsys.readouterr().out)
    parquet = result["parquet_bytes"]
    assert parquet > 0.9 * rows * (5120 * 2 + 1280 * 4)  # fp16 V_sem and float32 cells barely compress
    lazy, eager = result["variants"]["lazy_arrow"], result["variants"]["eager_to_pylist"]
    assert lazy["rows"] == eager["rows"] == rows
    bound = 1.5 * parquet + 64 * MIB  # the constant: allocator and library state that does not grow with rows
    assert lazy["rss_growth_bytes"] <= bound, lazy
    assert lazy["anon_growth_bytes"] <= 64 * MIB, lazy  # the rows themselves are shared file pages, not heap
    assert lazy["arrow_heap_bytes"] < 0.05 * lazy["arrow_table_bytes"], lazy
    assert lazy["forked_worker_private_growth_bytes"] <= 16 * MIB, lazy  # a worker reads the parent's pages
    # the same measurements see the eager path's Python objects break the bound: they can fail
    assert eager["rss_growth_bytes"] > bound, eager
    assert eager["forked_worker_private_growth_bytes"] > 3 * parquet, eager
    assert lazy["per_1000_rows_mib"]["rss_growth"] == round(lazy["rss_growth_bytes"] * 1000 / rows / MIB, 2)

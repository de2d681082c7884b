"""Writers of one store released at one instant (issue 18): with the same settings the manifest always matches
the shards; a run with other settings is refused every time and never relabels the store.

Workers are forked from the test process at a `Barrier`, so all of them call the store's create / append /
update path together. Most tests drive the store functions `run_extract` calls, in its order, with rows
standing in for the teacher's (repeated trials); the last one runs real `run_extract` workers on the tiny teacher.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
from pathlib import Path

import numpy as np
import pytest
import torch

from lavit.data.signal_store import MANIFEST, pending_row, read_manifest, read_store, store_counts, write_json_atomic
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import open_store, record_counts, record_pixel_limits, run_extract
from lavit.toyworld.shapes import make_scene

# Forked children start at once with everything imported; those that run the teacher first drop to one torch
# thread, as DataLoader workers do, since an OpenMP pool does not survive a fork.
FORK = mp.get_context("fork")
N_SAMPLES, BATCH = 48, 2
PIXEL_LIMITS = {"min_pixels": 3136, "max_pixels": 50176}


def stand_in_rows(group: int, layers: str) -> list[dict]:
    """The rows of one batch group, marked with the settings of the run that wrote them."""
    rows = []
    for index in range(group * BATCH, (group + 1) * BATCH):
        row = pending_row(index, f"s{index}", f"s{index}.png", "what color ?", "red", "toy")
        row.update(teacher_answer=layers, **({"status": "ok"} if index % 3 else {"reject_reason": "image_missing"}))
        rows.append(row)
    return rows


def store_worker(cfg: ExtractConfig, barrier, results) -> None:
    """`run_extract`'s store calls, in its order: open (create or compare; take this worker's shard prefix),
    read the stored ids, record the pixel limits, append shards, record the counts, write the results file."""
    try:
        barrier.wait()
        worker, workers = cfg.worker()
        groups = range(N_SAMPLES // BATCH)
        with open_store(cfg, N_SAMPLES) as writer:
            done = writer.stored_ids()
            ids = {g: {f"s{i}" for i in range(g * BATCH, (g + 1) * BATCH)} for g in groups}
            todo = [g for g in groups if g % workers == worker and not ids[g] <= done]
            if todo:
                record_pixel_limits(Path(cfg.out), PIXEL_LIMITS)
            pending: list[dict] = []
            for g in todo:
                pending += stand_in_rows(g, cfg.layers)
                if len(pending) >= cfg.rows_per_file:
                    writer.write(pending)
                    pending = []
            if pending:
                writer.write(pending)
            counts = record_counts(Path(cfg.out), N_SAMPLES)
            results_file = Path(cfg.out) / f"extract_results-w{worker:03d}of{workers:03d}.json"
            write_json_atomic({"store_counts": counts}, results_file)
        results.put((cfg.shard, cfg.layers, "ok", ""))
    except ValueError as err:  # refusals, StoreBusy included
        results.put((cfg.shard, cfg.layers, "refused", str(err)))
    except BaseException as err:  # anything else is a failure of the store; the test reports it
        results.put((cfg.shard, cfg.layers, "error", f"{type(err).__name__}: {err}"))


def extract_worker(cfg: ExtractConfig, barrier, results) -> None:
    """A real `lavit extract` worker."""
    torch.set_num_threads(1)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        barrier.wait()
        run_extract(cfg)
        results.put((cfg.shard, cfg.layers, "ok", ""))
    except ValueError as err:
        results.put((cfg.shard, cfg.layers, "refused", str(err)))
    except BaseException as err:
        results.put((cfg.shard, cfg.layers, "error", f"{type(err).__name__}: {err}"))


def release_together(target, configs: list[ExtractConfig]) -> list[tuple]:
    """Run one process per config, all released by one barrier; their outcomes (shard, layers, outcome, message)."""
    barrier, results = FORK.Barrier(len(configs)), FORK.Queue()
    procs = [FORK.Process(target=target, args=(cfg, barrier, results)) for cfg in configs]
    for p in procs:
        p.start()
    outcomes = []
    try:
        for _ in procs:
            outcomes.append(results.get(timeout=300))  # a guard against a hang, not a time assertion
    except queue.Empty:
        pytest.fail(f"a worker neither finished nor failed; got {outcomes}")
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return outcomes


def config(out: Path, shard: str, layers: str = "all", **kw) -> ExtractConfig:
    values = dict(samples="samples.jsonl", out=str(out), teacher="tiny-teacher", shard=shard, layers=layers,
                  batch_size=BATCH, rows_per_file=2 * BATCH)
    return ExtractConfig(**{**values, **kw})


def write_samples(root: Path, n: int) -> dict:
    """`n` toy scenes and one sample whose image is missing; the extraction settings that read them."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        scene = make_scene(rng)
        scene.image.save(root / "images" / f"g{i}.png")
        records.append({"id": f"g{i}", "image": f"g{i}.png", "question": f"what color is the {scene.shape} ?",
                        "answer": scene.color, "bbox": list(scene.bbox)})
    records.insert(n // 2, {"id": "missing", "image": "absent.png", "question": "what ?", "answer": "red"})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return dict(samples=str(root / "samples.jsonl"), image_root=str(root / "images"), max_new_tokens=4,
                max_image_pixels=400 * 400)


def check_store(out: Path, layers: str, rows: int = N_SAMPLES) -> None:
    """The manifest against the shards: settings of the run that wrote every row, counts derived from them."""
    manifest = read_manifest(out)
    table = read_store(out)  # raises on an id stored twice
    assert manifest["settings"]["layers"] == layers
    assert set(table.column("teacher_answer").to_pylist()) == {layers}  # every row is that run's
    assert table.num_rows == rows == manifest["num_input_samples"]
    assert manifest["counts"] == store_counts(out) and manifest["counts"]["rows"] == rows
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert "pixel_limits" in manifest and (out / "README.md").is_file()
    leftovers = [p.name for p in out.rglob(".*")]  # temporary files and locks are all gone
    assert leftovers == [], leftovers


def test_workers_with_one_settings_released_at_once(tmp_path):
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        outcomes = release_together(store_worker, [config(out, f"{i}/8") for i in range(8)])
        assert [o for o in outcomes if o[2] != "ok"] == []
        check_store(out, "all")


def test_runs_with_other_settings_released_at_once(tmp_path):
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        configs = [config(out, f"{i}/4", layers) for layers in ("all", "last:1") for i in range(4)]
        outcomes = release_together(store_worker, configs)
        assert [o for o in outcomes if o[2] == "error"] == []
        winners = {layers for _, layers, outcome, _ in outcomes if outcome == "ok"}
        assert len(winners) == 1, outcomes  # one run owns the store ...
        (winner,) = winners
        for _, layers, outcome, message in outcomes:  # ... and every worker of the other is refused
            assert (outcome == "ok") == (layers == winner), outcomes
            if outcome == "refused":
                assert "different settings (layers:" in message
        check_store(out, winner)


def test_one_worker_started_twice(tmp_path):
    out = tmp_path / "twice"
    outcomes = release_together(store_worker, [config(out, "0/1"), config(out, "0/1")])
    assert [o for o in outcomes if o[2] == "error"] == [] and any(o[2] == "ok" for o in outcomes)
    for _, _, outcome, message in outcomes:  # the later one either waits out nothing (all stored) or is refused
        assert outcome == "ok" or "shard prefix signals-w000of001" in message
    check_store(out, "all")


TWO_COUNTS = "workers of two counts would store some samples twice"


def test_workers_of_two_counts_released_at_once(tmp_path):
    # `--shard 0/2,1/2` and `0/3,1/3,2/3` started together all wrote; every one then exited with "ids stored more
    # than once", and so did every later run
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        outcomes = release_together(store_worker, [config(out, shard) for shard in ("0/2", "1/2", "0/3", "1/3", "2/3")])
        assert [o for o in outcomes if o[2] == "error"] == []
        for _, _, outcome, message in outcomes:
            assert outcome == "ok" or TWO_COUNTS in message, outcomes
        assert read_store(out).num_rows <= N_SAMPLES  # every id stored once
        workers = read_manifest(out)["workers"]
        for i in range(workers):  # the store's count, rerun, completes it
            assert release_together(store_worker, [config(out, f"{i}/{workers}")])[0][2] == "ok"
        check_store(out, "all")


def test_a_later_run_may_use_another_worker_count_but_not_while_one_writes(tmp_path):
    out = tmp_path / "store"
    assert release_together(store_worker, [config(out, "0/2")])[0][2] == "ok"
    assert read_manifest(out)["workers"] == 2
    shards = sorted(p.name for p in (out / "data").iterdir())
    with open_store(config(out, "1/2"), N_SAMPLES):  # worker 1 of 2 writing now, in this process
        (_, _, outcome, message), = release_together(store_worker, [config(out, "0/3")])
        assert outcome == "refused" and TWO_COUNTS in message, message
        assert "signals-w001of002 (" in message and "--shard 0/3" in message
    assert sorted(p.name for p in (out / "data").iterdir()) == shards  # refused before writing
    for i in range(3):  # once it has finished, three workers go on from what is stored
        assert release_together(store_worker, [config(out, f"{i}/3")])[0][2] == "ok"
    assert read_manifest(out)["workers"] == 3
    check_store(out, "all")


def test_real_extract_workers_released_at_once(tmp_path):
    kw = write_samples(tmp_path, 13)
    reference = {}
    for layers in ("all", "last:1"):
        run_extract(config(tmp_path / f"reference-{layers}", "", layers, **kw))
        reference[layers] = read_store(tmp_path / f"reference-{layers}").to_pylist()
    # six workers of one run: the store equals one uninterrupted run's, its manifest counts every shard
    out = tmp_path / "six"
    outcomes = release_together(extract_worker, [config(out, f"{i}/6", **kw) for i in range(6)])
    assert [o for o in outcomes if o[2] != "ok"] == []
    assert read_store(out).to_pylist() == reference["all"]
    assert read_manifest(out)["counts"] == store_counts(out)
    # two runs with other settings into one folder: one is refused, the store is the other's alone
    out = tmp_path / "two"
    outcomes = release_together(extract_worker, [config(out, "", "all", **kw), config(out, "", "last:1", **kw)])
    (winner,) = {layers for _, layers, outcome, _ in outcomes if outcome == "ok"}
    assert sorted(o[2] for o in outcomes) == ["ok", "refused"], outcomes
    assert read_manifest(out)["settings"]["layers"] == winner
    assert read_store(out).to_pylist() == reference[winner]
    assert read_manifest(out)["counts"] == store_counts(out)

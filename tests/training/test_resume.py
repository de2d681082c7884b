"""Resume from the newest complete checkpoint: `lavit train` killed inside each phase of a save (and stopped by a
full disk) resumes with `resume=latest` to the uninterrupted loss curve, the torn checkpoint reported and set
aside, the last complete one never rotated away; a resume with settings that change the run, or on data rewritten
since, is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lavit.data.sft_dataset import data_fingerprint
from lavit.toyworld.shapes import write_sft_set
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.lavit_trainer import CHECKPOINT_MARKER, checkpoint_problem
from lavit.training.train import TRAIN_LOG, run_training

DRIVER = Path(__file__).with_name("kill_driver.py")
# 6 steps, a checkpoint every 2 and only the newest kept; the save of step 4 is the one killed, inside the gate
# warm-up (γ still rising, so the resumed gate value is checked too).
RUN = dict(max_steps=6, save_steps=2, save_total_limit=1, logging_steps=1, gate_warmup_steps=5, global_batch_size=4,
           learning_rate=1e-3, warmup_ratio=0.0, min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28,
           gradient_checkpointing=False)
KILLED_AT = 4
KILLS = ["weights", "mid_weights", "optimizer", "trainer_state", "marker", "disk_full"]
KEYS = ("loss", "loss_ntp", "loss_concept", "loss_traj", "gamma", "learning_rate")


@pytest.fixture(scope="module")
def sft_set(tmp_path_factory):
    return write_sft_set(tmp_path_factory.mktemp("sft"), 24, seed=0)


def config(sft_set: Path, out: Path, **kw) -> LavitTrainConfig:
    return LavitTrainConfig(**{"data": [str(sft_set)], "image_root": str(sft_set.parent), "output_dir": str(out),
                               **RUN, **kw})


@pytest.fixture(scope="module")
def uninterrupted(sft_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return run_training(config(sft_set, out)), out


@pytest.fixture(scope="module")
def killed(sft_set, tmp_path_factory):
    """One driver process, one forked `lavit train` child per kill point (so torch is imported once)."""
    out = tmp_path_factory.mktemp("killed")
    overrides = [f"{k}={v}" for k, v in RUN.items()]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(DRIVER), str(out), str(sft_set), str(KILLED_AT),
                           ",".join([*KILLS, "rotation"]), *overrides], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def curve(history: list[dict], after: int = 0) -> list[dict]:
    return [{k: h[k] for k in ("step", *KEYS)} for h in history if "loss" in h and h["step"] > after]


def assert_same_curve(got: list[dict], want: list[dict]) -> None:
    assert [h["step"] for h in got] == [h["step"] for h in want]
    for key in KEYS:
        assert [h[key] for h in got] == pytest.approx([h[key] for h in want], rel=1e-6, abs=1e-8), key


@pytest.mark.slow
@pytest.mark.parametrize("point", KILLS)
def test_a_save_cut_short_resumes_from_the_last_complete_checkpoint(point, killed, uninterrupted, sft_set):
    ended = json.loads((killed / f"{point}.json").read_text())
    if point == "disk_full":
        assert ended["exit"] == 1 and "No space left on device" in ended["error"], ended
    else:
        assert ended == {"signal": signal.SIGKILL, "error": None}, ended
    out = killed / point
    # the torn save is recognised as such, and the complete one before it was not rotated away (limit 1)
    assert checkpoint_problem(out / f"checkpoint-{KILLED_AT}") is not None
    assert checkpoint_problem(out / "checkpoint-2") is None
    full, full_dir = uninterrupted
    with pytest.warns(RuntimeWarning) as warned:
        resumed = run_training(config(sft_set, out, resume="latest"))
    notes = [str(w.message) for w in warned if issubclass(w.category, RuntimeWarning)]
    assert any(f"checkpoint-{KILLED_AT} is a torn checkpoint" in n for n in notes), notes
    # a killed run cannot remove its lock file: the next run takes it over and says so (a full disk is an error
    # the run itself handles, releasing the lock)
    assert any(n.startswith("took over") for n in notes) == (point != "disk_full"), notes
    assert resumed["resumed_from"] == str(out / "checkpoint-2")
    assert [m["checkpoint"] for m in resumed["set_aside"]] == [f"checkpoint-{KILLED_AT}"]
    assert (out / "torn" / f"checkpoint-{KILLED_AT}").is_dir()
    # the resumed run continues exactly as the uninterrupted one, in its results and in the log on disk,
    # where every step appears once (the lines of the steps trained again were cut back)
    assert_same_curve(curve(resumed["log_history"]), curve(full["log_history"]))
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)  # over every step, not this session's
    log = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]
    assert_same_curve(curve(log), curve([json.loads(line) for line in (full_dir / TRAIN_LOG).read_text().splitlines()]))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    assert checkpoint_problem(out / "checkpoint-6") is None


@pytest.mark.slow
def test_a_kill_before_rotation_keeps_both_complete_checkpoints(killed, uninterrupted, sft_set):
    out = killed / "rotation"
    assert json.loads((out.parent / "rotation.json").read_text())["signal"] == signal.SIGKILL
    assert [checkpoint_problem(out / f"checkpoint-{step}") for step in (2, KILLED_AT)] == [None, None]
    with pytest.warns(RuntimeWarning, match="took over"):
        resumed = run_training(config(sft_set, out, resume="latest"))
    assert resumed["resumed_from"] == str(out / f"checkpoint-{KILLED_AT}") and resumed["set_aside"] == []
    assert_same_curve(curve(resumed["log_history"], after=KILLED_AT), curve(uninterrupted[0]["log_history"], KILLED_AT))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]


@pytest.fixture
def copied(uninterrupted, tmp_path) -> Path:
    """A folder holding a complete checkpoint of the uninterrupted run (step 6, the last one kept)."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(uninterrupted[1] / "checkpoint-6", out / "checkpoint-6")
    return out


@pytest.mark.slow
def test_a_resume_that_would_change_the_run_is_refused_with_the_differences(copied, sft_set):
    for change, listed in (({"lam": 0.5}, "lam: 0.3 → 0.5"),
                           ({"learning_rate": 2e-3}, "learning_rate: 0.001 → 0.002"),
                           ({"traj_top_k": 4, "max_steps": 8}, "max_steps: 6 → 8; traj_top_k: 8 → 4")):
        with pytest.raises(ValueError, match="these settings differ") as err:
            run_training(config(sft_set, copied, resume="latest", **change))
        assert listed in str(err.value)
    assert sorted(p.name for p in copied.iterdir()) == ["checkpoint-6"]  # refused before anything was written


@pytest.mark.slow
def test_the_same_data_spelled_relative_resumes_and_settings_that_may_change_do(copied, sft_set, monkeypatch):
    monkeypatch.chdir(sft_set.parent)
    resumed = run_training(config(sft_set, copied, resume="latest", data=[sft_set.name], image_root=".",
                                  save_steps=3, logging_steps=2, dataloader_num_workers=0, save_total_limit=2,
                                  gate_attention="dense"))
    assert resumed["resumed_from"] == str(copied / "checkpoint-6") and resumed["global_step"] == 6


@pytest.mark.slow
def test_a_torn_checkpoint_named_or_alone_is_a_clear_error(copied, sft_set):
    (copied / "checkpoint-6" / CHECKPOINT_MARKER).unlink()
    with pytest.raises(ValueError, match=f"resume={copied / 'checkpoint-6'} is not a complete checkpoint "
                                         f"\\(no {CHECKPOINT_MARKER}"):
        run_training(config(sft_set, copied, resume=str(copied / "checkpoint-6")))
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint; checkpoint-6: no lavit_checkpoint"):
        run_training(config(sft_set, copied, resume="latest"))
    assert (copied / "checkpoint-6").is_dir() and not (copied / "torn").exists()  # an error moves nothing


@pytest.mark.slow
def test_a_checkpoint_file_damaged_after_its_save_is_not_complete(copied, sft_set):
    state = copied / "checkpoint-6" / "optimizer.pt"
    size = state.stat().st_size
    os.truncate(state, size - 1)
    assert checkpoint_problem(copied / "checkpoint-6") == f"optimizer.pt has {size - 1} bytes, {size} when saved"
    state.unlink()
    assert checkpoint_problem(copied / "checkpoint-6") == "optimizer.pt is missing"
    with pytest.raises(FileNotFoundError, match="checkpoint-6: optimizer.pt is missing"):
        run_training(config(sft_set, copied, resume="latest"))


def test_a_resume_on_rewritten_data_is_refused_and_on_the_same_data_continues(tmp_path):
    data = write_sft_set(tmp_path / "sft", 24, seed=0)
    out = tmp_path / "run"
    short = dict(max_steps=2, save_steps=2, gate_warmup_steps=1)
    first = run_training(config(data, out, **short))
    recorded = json.loads((out / "run_settings.json").read_text())["data_fingerprint"]
    assert recorded == first["data_fingerprint"] == data_fingerprint([str(data)])
    assert recorded[str(data.resolve())]["rows"] == 24
    marker = json.loads((out / "checkpoint-2" / CHECKPOINT_MARKER).read_text())
    assert marker["settings"]["data_fingerprint"] == recorded
    shutil.copy(data, tmp_path / "original.parquet")

    write_sft_set(tmp_path / "sft", 30, seed=1)  # the same path, other rows (the old code resumed on them)
    listing = sorted(p.name for p in out.rglob("*"))
    log = (out / TRAIN_LOG).read_text()
    with pytest.raises(ValueError, match="the training data differs from what the run that wrote .*checkpoint-2 "
                                         "trained on") as err:
        run_training(config(data, out, resume="latest", **short))
    assert f"{data.resolve()}: {recorded[str(data.resolve())]['sha256'][:12]}… (1 files" in str(err.value)
    assert f"{data.resolve()}: 24 rows → 30 rows" in str(err.value)
    assert sorted(p.name for p in out.rglob("*")) == listing and (out / TRAIN_LOG).read_text() == log

    shutil.copy(tmp_path / "original.parquet", data)  # the data the run began with
    # a checkpoint recorded before lavit fingerprinted its data resumes, saying it cannot check
    old = tmp_path / "old"
    shutil.copytree(out / "checkpoint-2", old / "checkpoint-2")
    marker = json.loads((old / "checkpoint-2" / CHECKPOINT_MARKER).read_text())
    del marker["settings"]["data_fingerprint"]
    (old / "checkpoint-2" / CHECKPOINT_MARKER).write_text(json.dumps(marker))
    with pytest.warns(RuntimeWarning, match="checkpoint-2 recorded no fingerprint of its training data"):
        run_training(config(data, old, resume="latest", **short))
    # the same data: the resume goes on
    resumed = run_training(config(data, out, resume="latest", **short))
    assert resumed["resumed_from"] == str(out / "checkpoint-2") and resumed["data_fingerprint"] == recorded


def test_the_data_fingerprint_of_a_store_a_folder_of_shards_and_a_file(tmp_path):
    data = write_sft_set(tmp_path / "sft", 5, seed=0)
    store, folder = tmp_path / "store", tmp_path / "folder"
    (store / "data").mkdir(parents=True)
    folder.mkdir()
    for target in (store / "data", folder):
        shutil.copy(data, target / "a.parquet")
        shutil.copy(data, target / "b.parquet")
    (store / "manifest.json").write_text(json.dumps({"kind": "lavit_sft", "counts": {"kept": 10}}))
    found = data_fingerprint([str(store), str(folder), str(data)])
    assert list(found) == [str(store.resolve()), str(folder.resolve()), str(data.resolve())]
    assert [(f["files"], f["rows"]) for f in found.values()] == [(3, 10), (2, 10), (1, 5)]  # a store: its manifest too
    # a filter rerun with other settings rewrites the manifest, even where the kept rows happen to be the same
    (store / "manifest.json").write_text(json.dumps({"kind": "lavit_sft", "counts": {"kept": 10}, "other": 1}))
    assert data_fingerprint([str(store)])[str(store.resolve())]["sha256"] != found[str(store.resolve())]["sha256"]


def test_a_resumed_run_reports_the_whole_runs_mean_loss(sft_set, tmp_path):
    """train_loss of a run resumed from step 2 of 4 is the uninterrupted run's (the Trainer's own covers only the
    steps after the resume), also when the checkpoint was saved between two logging steps."""
    short = dict(max_steps=4, save_steps=2, logging_steps=3, gate_warmup_steps=2, save_total_limit=0)
    full = run_training(config(sft_set, tmp_path / "full", **short))
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", out / "checkpoint-2")
    marker = json.loads((out / "checkpoint-2" / CHECKPOINT_MARKER).read_text())
    assert marker["loss_sum"] > 0
    resumed = run_training(config(sft_set, out, resume="latest", **short))
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    assert resumed["train_loss_steps"] == full["train_loss_steps"] == "steps 1-4"
    del marker["loss_sum"]  # a checkpoint from before lavit recorded it: this session's mean, said so
    (out / "checkpoint-2" / CHECKPOINT_MARKER).write_text(json.dumps(marker))
    again = run_training(config(sft_set, out, resume=str(out / "checkpoint-2"), **short))
    assert again["train_loss_steps"] == "steps 3-4 (the checkpoint resumed from recorded no loss sum)"
    assert again["train_loss"] != pytest.approx(full["train_loss"], rel=1e-5)


def test_a_global_batch_larger_than_the_data_is_fitted_and_recorded(sft_set, tmp_path):
    from lavit.training.train import fit_batch_plan

    plan = {"world_size": 1, "per_device_batch_size": 16, "gradient_accumulation_steps": 1, "global_batch_size": 16}
    assert fit_batch_plan(plan, 40) == (plan, None)
    fitted, note = fit_batch_plan(plan, 5)
    assert fitted == {"world_size": 1, "per_device_batch_size": 5, "gradient_accumulation_steps": 1,
                      "global_batch_size": 5} and "global_batch_size 16 is more than the 5 rows" in note
    ddp = {"world_size": 4, "per_device_batch_size": 1, "gradient_accumulation_steps": 4, "global_batch_size": 16}
    assert fit_batch_plan(ddp, 9)[0] == {"world_size": 4, "per_device_batch_size": 1, "gradient_accumulation_steps": 2,
                                         "global_batch_size": 8}
    with pytest.raises(ValueError, match="holds 3 rows, fewer than the 4 processes"):
        fit_batch_plan(ddp, 3)
    one = write_sft_set(tmp_path / "one", 1, seed=0)
    with pytest.warns(RuntimeWarning, match="global_batch_size 16 is more than the 1 rows"):
        result = run_training(config(one, tmp_path / "run", max_steps=2, save_steps=2, gate_warmup_steps=1,
                                     global_batch_size=16))
    assert result["global_batch_size"] == 1 and result["global_batch_size_asked"] == 16
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["batch_adjusted"].startswith(
        "global_batch_size 16 is more than the 1 rows")

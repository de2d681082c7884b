"""End-to-end training on CPU: losses fall, resume is exact, NaN stops, the export is a plain HF model."""

import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lavit.config import load_config
from lavit.models.projection_head import HEAD_WEIGHTS
from lavit.toyworld.shapes import write_sft_set
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.lavit_trainer import NonFiniteLossError
from lavit.training.train import run_training

SMALL = dict(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28, gradient_checkpointing=False)


@pytest.fixture(scope="module")
def sft_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    return write_sft_set(root, 24, seed=0)


def config(sft_set, out, **kw):
    values = dict(data=[str(sft_set)], image_root=str(sft_set.parent), output_dir=str(out), global_batch_size=4,
                  learning_rate=1e-3, warmup_ratio=0.0, logging_steps=1, save_steps=1000, gate_warmup_steps=1, **SMALL)
    values.update(kw)
    return LavitTrainConfig(**values)


def losses(history, key):
    return [h[key] for h in history if key in h]


@pytest.mark.slow
def test_a_few_hundred_steps_lower_all_three_losses(sft_set, tmp_path):
    result = run_training(config(sft_set, tmp_path, max_steps=300, logging_steps=25, gate_warmup_steps=100))
    for key in ("loss_ntp", "loss_concept", "loss_traj"):
        curve = losses(result["log_history"], key)
        assert len(curve) == 12
        assert sum(curve[-2:]) / 2 < 0.7 * sum(curve[:2]) / 2, (key, curve)
    saved = json.loads((tmp_path / "train_results.json").read_text())
    assert saved["settings"]["max_steps"] == 300 and saved["global_step"] == 300


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(sft_set, tmp_path):
    full = run_training(config(sft_set, tmp_path / "full", max_steps=8, save_steps=4, gate_warmup_steps=6))
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", resumed_dir / "checkpoint-4")
    resumed = run_training(config(sft_set, resumed_dir, max_steps=8, save_steps=4, gate_warmup_steps=6,
                                  resume="latest"))
    keys = ("loss", "loss_ntp", "loss_concept", "loss_traj", "gamma", "learning_rate")
    after = [h for h in full["log_history"] if "loss" in h and h["step"] > 4]
    again = [h for h in resumed["log_history"] if "loss" in h and h["step"] > 4]
    assert [h["step"] for h in again] == [5, 6, 7, 8] == [h["step"] for h in after]
    for key in keys:
        assert [h[key] for h in again] == pytest.approx([h[key] for h in after], rel=1e-6, abs=1e-8), key
    assert any(0 < h["gamma"] < 1 for h in after)  # resumed inside the gate warm-up


@pytest.mark.slow
def test_non_finite_loss_stops_training_with_a_clear_message(sft_set, tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step"):
        run_training(config(sft_set, tmp_path, max_steps=5, learning_rate=1e30, max_grad_norm=0.0))


@pytest.mark.slow
def test_export_reloads_with_plain_transformers_and_generates(sft_set, tmp_path):
    result = run_training(config(sft_set, tmp_path, max_steps=3))
    student_dir = result["student_dir"]
    assert (tmp_path / "student" / HEAD_WEIGHTS).is_file()
    script = f"""
import sys
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
model = Qwen2_5_VLForConditionalGeneration.from_pretrained({student_dir!r})
processor = AutoProcessor.from_pretrained({student_dir!r})
assert 'lavit' not in sys.modules
assert model.config.text_config._attn_implementation == 'sdpa', model.config.text_config._attn_implementation
text = processor.apply_chat_template([{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "what color ?"}}]}}], add_generation_prompt=True, tokenize=False)
inputs = processor(text=[text + "<lvr_1><lvr_2><lvr_3><lvr_4>"], images=[Image.new("RGB", (56, 56))], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
assert out.shape[1] == inputs["input_ids"].shape[1] + 3
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.slow
def test_lora_and_naive_sft_runs_export_plain_checkpoints(sft_set, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    lora = run_training(config(sft_set, tmp_path / "lora", max_steps=2, lora_r=4))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(lora["student_dir"])
    assert not any("lora" in name for name in model.state_dict())
    sft = run_training(config(sft_set, tmp_path / "sft", max_steps=2, method="naive_sft"))
    meta = json.loads((tmp_path / "sft" / "student" / "lavit.json").read_text())
    assert meta["latent_tokens"] == [] and not (tmp_path / "sft" / "student" / HEAD_WEIGHTS).exists()
    assert "loss_traj" not in sft["log_history"][0]


def test_missing_data_and_columns_are_clear_errors(sft_set, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_training(config(sft_set, tmp_path, max_steps=1, gate_warmup_steps=0, data=[str(tmp_path / "nope.parquet")]))
    with pytest.raises(ValueError, match="lacks columns"):
        run_training(config(sft_set, tmp_path, max_steps=1, gate_warmup_steps=0, answer_field="teacher_answer"))


def test_recipes_load_and_override(tmp_path):
    paper = load_config(LavitTrainConfig, "recipes/lavit_qwen2_5_vl_3b.yaml", ["max_steps=500", "gate=hard"])
    assert (paper.learning_rate, paper.global_batch_size, paper.num_latent_tokens, paper.lam) == (5e-6, 16, 4, 0.3)
    assert (paper.max_steps, paper.gate, paper.gate_warmup_steps) == (500, "hard", 400)
    naive = load_config(LavitTrainConfig, "recipes/naive_sft_qwen2_5_vl_3b.yaml")
    assert naive.method == "naive_sft" and naive.learning_rate == paper.learning_rate
    with pytest.raises(ValueError, match="unknown"):
        load_config(LavitTrainConfig, None, ["learnig_rate=1"])
    with pytest.raises(ValueError):
        load_config(LavitTrainConfig, None, ["gate=soft"])
    with pytest.raises(ValueError, match="max_steps must be an integer"):
        load_config(LavitTrainConfig, None, ["max_steps=ten"])
    with pytest.raises(ValueError, match="learning_rate must be a number"):
        load_config(LavitTrainConfig, None, ["learning_rate=fast"])
    # YAML 1.1 reads 1e-4 as a string: it must still be the number the user meant, in overrides and recipes.
    assert load_config(LavitTrainConfig, None, ["learning_rate=1e-4"]).learning_rate == 1e-4
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 2e-5\nlam: 1\n")
    loaded = load_config(LavitTrainConfig, recipe)
    assert (loaded.learning_rate, loaded.lam) == (2e-5, 1.0) and isinstance(loaded.lam, float)
    with pytest.raises(ValueError, match="max_steps"):
        load_config(LavitTrainConfig, None, ["max_steps=0"])


@pytest.mark.parametrize("gate", ["cosine", "hard"])
def test_a_gate_that_would_never_open_is_refused_before_work(gate):
    for steps in (300, 400):  # the last step is max_steps - 1: T_w = max_steps never opens the gate either
        with pytest.raises(ValueError, match=r"gate_warmup_steps \(400\) must be below max_steps"):
            LavitTrainConfig(max_steps=steps, gate_warmup_steps=400, gate=gate)
    assert LavitTrainConfig(max_steps=401, gate_warmup_steps=400, gate=gate).gate_warmup_steps == 400
    # no gate to open: single-stage LaViT and Naive-SFT train any number of steps
    assert LavitTrainConfig(max_steps=10, gate_warmup_steps=400, gate="none").max_steps == 10
    assert LavitTrainConfig(max_steps=10, gate_warmup_steps=400, method="naive_sft").max_steps == 10


class WeightChange:
    """Per trainable parameter: the share of its elements that training changed, and the dtypes held."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        self.changed = {n: float((params[n].detach() != p).float().mean()) for n, p in self.start.items()}
        self.dtypes = {p.dtype for p in params.values()}

    def __getattr__(self, name):  # the remaining TrainerCallback events
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


@pytest.mark.slow
def test_bf16_training_at_the_paper_lr_changes_every_weight_like_fp32(sft_set, tmp_path):
    change = {}
    for precision in ("fp32", "bf16", "bf16_pure"):
        spy = WeightChange()
        with pytest.warns(UserWarning, match="bf16_pure") if precision == "bf16_pure" else nullcontext():
            run_training(config(sft_set, tmp_path / precision, max_steps=3, learning_rate=5e-6, precision=precision,
                                gate_warmup_steps=2), callbacks=[spy])
        # embedding rows of tokens absent from the batches get no gradient; every other weight should move
        change[precision] = {n: c for n, c in spy.changed.items() if "embed_tokens" not in n}
        assert spy.dtypes == ({torch.bfloat16, torch.float32} if precision == "bf16_pure" else {torch.float32})
    assert min(change["fp32"].values()) > 0.9
    assert min(change["bf16"].values()) > 0.9, {n: c for n, c in change["bf16"].items() if c <= 0.9}
    # the failure mode the default avoids: bf16 weights under plain AdamW keep most of their elements
    decoder = [c for n, c in change["bf16_pure"].items() if "language_model" in n and n.endswith("proj.weight")]
    assert sum(decoder) / len(decoder) < 0.5


def test_the_projection_head_stays_fp32_under_bf16_autocast():
    from lavit.models.projection_head import ProjectionHead

    head = ProjectionHead(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(2, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.float32


def test_a_folder_holding_another_run_is_refused_unless_told(sft_set, tmp_path):
    out = tmp_path / "run"
    first = run_training(config(sft_set, out, max_steps=2, gate_warmup_steps=1))
    (out / "notes.txt").write_text("mine")
    # one after another with other settings: refused, nothing of the first run touched
    with pytest.raises(ValueError, match=r"holds another run \(checkpoint-2, run_settings.json, student, "
                                         r"train_log.jsonl, train_results.json\): resume=latest continues it, "
                                         "overwrite=true deletes it first"):
        run_training(config(sft_set, out, max_steps=2, gate_warmup_steps=1, learning_rate=5e-4))
    assert json.loads((out / "train_results.json").read_text())["log_history"] == first["log_history"]
    # overwrite=true: the old run's files go first, then this run is the folder's only one
    second = run_training(config(sft_set, out, max_steps=1, gate_warmup_steps=0, learning_rate=5e-4,
                                 save_steps=1, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "notes.txt", "run_settings.json", "student",
                                                     "train_log.jsonl", "train_results.json"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log if "loss" in line] == [1]
    assert json.loads((out / "run_settings.json").read_text())["learning_rate"] == 5e-4 == second["settings"][
        "learning_rate"]


def test_a_folder_in_use_by_a_running_train_is_refused(sft_set, tmp_path):
    from lavit.data.run_dir import RunLock

    with RunLock(tmp_path / "run"):  # another `lavit train` holding the folder
        with pytest.raises(ValueError, match=rf"run is in use by another run \(pid {os.getpid()} on host"):
            run_training(config(sft_set, tmp_path / "run", max_steps=1, gate_warmup_steps=0))
    assert not (tmp_path / "run" / "run_settings.json").exists()


def test_an_output_dir_that_is_or_holds_an_input_is_refused_before_anything_is_deleted(sft_set, tmp_path):
    data = sft_set.parent
    before = sorted(p.name for p in data.rglob("*"))
    for out in (data, data.parent):
        with pytest.raises(ValueError, match=r"output_dir .* (is|contains) the input (data|image_root)"):
            run_training(config(sft_set, out, max_steps=1, gate_warmup_steps=0, overwrite=True))
    assert sorted(p.name for p in data.rglob("*")) == before
    with pytest.raises(ValueError, match="overwrite=true deletes the run that resume= continues"):
        config(sft_set, tmp_path, overwrite=True, resume="latest")


def test_an_image_that_does_not_decode_stops_before_the_first_step_or_is_dropped_and_recorded(tmp_path):
    # once: a corrupt PNG stopped training at step 4 of 12 with a `Rejection: image_corrupt` traceback
    data = write_sft_set(tmp_path / "sft", 8, seed=1)
    (data.parent / "images" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ValueError, match=r"image does not decode \(1 rows\): shape-00003"):
        run_training(config(data, tmp_path / "stop", max_steps=2))
    assert not (tmp_path / "stop" / "checkpoint-1").exists()
    with pytest.warns(RuntimeWarning, match="bad_rows=drop: 1 of 8 rows left out"):
        result = run_training(config(data, tmp_path / "drop", max_steps=2, bad_rows="drop"))
    assert result["global_step"] == 2 and result["dropped_rows"] == {"image_corrupt": 1}
    (record,) = [json.loads(line) for line in (tmp_path / "drop" / "dropped_rows.jsonl").read_text().splitlines()]
    assert record["id"] == "shape-00003" and record["reason"] == "image_corrupt" and "00003.png" in record["detail"]


def test_a_special_token_or_an_overlong_text_stops_before_the_first_step_or_is_dropped_and_recorded(tmp_path):
    # once: an <|image_pad|> in a question failed at step 2 ("The total number of <|image_pad|> tokens …") past
    # bad_rows=drop, and a 100 000-character question trained silently at 7 times the memory
    data = write_sft_set(tmp_path / "sft", 8, seed=2)
    rows = pq.read_table(data).to_pylist()
    rows[2]["question"] = "what color is the <|image_pad|> ?"
    rows[4]["answer"] = "red <lvr_2>"  # a latent token of the student's tokenizer
    rows[6]["question"] = "what color is the circle ? " * 3846  # 100 000 characters
    pq.write_table(pa.Table.from_pylist(rows), data)
    with pytest.raises(ValueError) as err:
        run_training(config(data, tmp_path / "stop", max_steps=2))
    message = str(err.value)
    assert "special token in question or answer (2 rows): shape-00002, shape-00004" in message
    assert "question or answer over max_text_tokens=1024 (1 rows): shape-00006" in message
    assert not (tmp_path / "stop" / "checkpoint-1").exists()
    with pytest.warns(RuntimeWarning, match="bad_rows=drop: 3 of 8 rows left out"):
        result = run_training(config(data, tmp_path / "drop", max_steps=2, bad_rows="drop"))
    assert result["global_step"] == 2 and result["settings"]["max_text_tokens"] == 1024
    assert result["dropped_rows"] == {"special_token_in_text": 2, "text_too_long": 1}
    dropped = [json.loads(line) for line in (tmp_path / "drop" / "dropped_rows.jsonl").read_text().splitlines()]
    assert {r["id"]: r["detail"] for r in dropped} == {
        "shape-00002": "question holds the special token '<|image_pad|>' at character 18",
        "shape-00004": "answer holds the special token '<lvr_2>' at character 4",
        "shape-00006": "question has 23076 tokens, over max_text_tokens=1024"}
    assert json.loads((tmp_path / "drop" / "run_settings.json").read_text())["max_text_tokens"] == 1024


@pytest.mark.slow
def test_a_bottleneck_student_trains_and_keeps_its_gate_at_inference(sft_set, tmp_path):
    """γ ≡ 0 on the question and the readout (vision reaches the answer only through latents 1..K-1), with L_read:
    every term finite, the export records the gate, and lavit's evaluation model applies it."""
    from lavit.eval.models import GenerativeModel
    from lavit.models.gating import InferenceGate

    result = run_training(config(sft_set, tmp_path / "run", max_steps=3, gate="none", gate_final=0.0,
                                 gate_readout=True, read_weight=0.5))
    logged = [h for h in result["log_history"] if "loss" in h]
    assert [h["gamma"] for h in logged] == [0.0, 0.0, 0.0]
    for key in ("loss_ntp", "loss_concept", "loss_traj", "loss_read"):
        assert all(torch.isfinite(torch.tensor(h[key])) for h in logged), key
    meta = json.loads((tmp_path / "run" / "student" / "lavit.json").read_text())
    assert meta["inference_gate"] == {"gamma": 0.0, "question_tokens": True, "readout": True}
    model = GenerativeModel(result["student_dir"], max_new_tokens=2)
    assert model.gate == InferenceGate(0.0, True, True) and model.describe()["inference_gate"]["readout"]
    plain = run_training(config(sft_set, tmp_path / "plain", max_steps=2))
    assert "inference_gate" not in json.loads((tmp_path / "plain" / "student" / "lavit.json").read_text())
    assert GenerativeModel(plain["student_dir"]).gate is None


def test_bottleneck_settings_are_checked():
    with pytest.raises(ValueError, match="gate_final must be in"):
        LavitTrainConfig(gate_final=1.5)
    with pytest.raises(ValueError, match="read_weight must be"):
        LavitTrainConfig(read_weight=-1.0)
    for bad in ({"gate_readout": True}, {"read_weight": 0.1}):
        with pytest.raises(ValueError, match="num_latent_tokens >= 2"):
            LavitTrainConfig(num_latent_tokens=1, **bad)
    assert LavitTrainConfig(gate_final=0.3).inference_gate == {"gamma": 0.3, "question_tokens": True,
                                                              "readout": False}
    assert LavitTrainConfig().inference_gate is None
    assert LavitTrainConfig(method="naive_sft", gate_final=0.0).inference_gate is None

"""The distillation baselines through `lavit train`: method=kd and lavit_kd on the teacher's stored top-k, method=gkd
through TRL's DistillationTrainer — the loss at the right positions, training, export, resume, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from lavit.data.collator import LavitCollator
from lavit.data.examples import IGNORE_INDEX, LAVIT_SYSTEM_PROMPT, TrainingSample, build_example
from lavit.models.checkpoint import load_model_and_processor
from lavit.models.lavit_student import LavitStudent
from lavit.models.tiny import build_tiny_processor, build_tiny_tokenizer
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import run_extract
from lavit.toyworld.shapes import make_scene
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.lavit_trainer import student_loss
from lavit.training.losses import KdObjective, kd_divergence
from lavit.training.train import run_training

SMALL = dict(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28, gradient_checkpointing=False)


def random_top_k(t: int, k: int, vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[t, k] distinct ids (some unmapped, −1) and log-probabilities summing below 1 per position."""
    ids = torch.stack([torch.randperm(vocab, generator=generator)[:k] for _ in range(t)])
    ids[0, -1] = -1
    p = torch.rand(t, k, generator=generator) + 0.1
    return ids, (0.9 * p / p.sum(-1, keepdim=True)).log()


def test_the_kd_term_reads_each_answer_position_of_the_batch(tiny):
    """Answers of different lengths in one padded batch: the loss pairs each row's teacher distributions with that
    row's answer positions, as one-sample batches of the same student give them."""
    generator = torch.Generator().manual_seed(0)
    examples = tiny.examples()
    k = len(tiny.latent_ids)
    for e in examples:
        t = int((e["labels"] != IGNORE_INDEX).sum()) - k  # answer tokens and end-of-turn
        e["kd_ids"], e["kd_logprobs"] = random_top_k(t, 3, len(tiny.tokenizer) - k, generator)
    collate = LavitCollator(tiny.tokenizer.pad_token_id)
    student = LavitStudent(tiny.model, tiny.latent_ids, trajectory_loss=False).eval()
    objective = KdObjective(beta=0.5, temperature=2.0, ce_weight=0.25)
    batch = collate(examples)
    out = student(batch)
    _, terms = student_loss(out, batch, 0.3, kd=objective, latent_ids=tiny.latent_ids)
    divergences, ce, latent_ce, answer_ce = [], [], [], []
    for e in examples:
        alone = student(collate([e]))
        answer = ~torch.isin(alone.ntp_targets, torch.tensor(tiny.latent_ids))
        assert int(answer.sum()) == len(e["kd_ids"]) and not answer[:k].any()
        divergences.append(kd_divergence(alone.ntp_logits[answer], e["kd_ids"], e["kd_logprobs"], 0.5, 2.0))
        per_token = torch.nn.functional.cross_entropy(alone.ntp_logits, alone.ntp_targets, reduction="none")
        ce.append(per_token)
        latent_ce.append(per_token[~answer])
        answer_ce.append(per_token[answer])
    d, n = torch.cat(divergences), sum(len(c) for c in ce)
    assert terms["loss_kd"].item() == pytest.approx(d.mean().item(), rel=1e-4)
    assert terms["loss_ce"].item() == pytest.approx(torch.cat(ce).mean().item(), rel=1e-4)
    want = (torch.cat(latent_ce).sum() + d.sum() + 0.25 * torch.cat(answer_ce).sum()) / n
    assert terms["loss_ntp"].item() == pytest.approx(want.item(), rel=1e-4)


def test_gkd_prompts_are_the_prompts_every_other_method_trains_on():
    """TRL renders the rows' prompts (`PromptSet`) to the same tokens `build_example` puts before the answer."""
    from trl.data_utils import prepare_multimodal_messages

    from lavit.training.gkd import PromptSet

    processor = build_tiny_processor(build_tiny_tokenizer())
    image = Image.new("RGB", (84, 56), "blue")

    class Rows:
        def __init__(self, system_prompt):
            self.system_prompt = system_prompt

        def __len__(self):
            return 1

        def sample(self, index):
            return TrainingSample("s", image, "what color is the circle ?", "blue")

    for system in (None, LAVIT_SYSTEM_PROMPT):
        item = PromptSet(Rows(system))[0]
        messages = prepare_multimodal_messages(item["prompt"], images=[item["image"]])
        trl_ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"][0]
        example = build_example(processor, TrainingSample("s", image, "what color is the circle ?", "blue"), [],
                                system_prompt=system)
        prompt = example["input_ids"][example["labels"] == IGNORE_INDEX]
        assert list(trl_ids) == prompt.tolist(), system


def test_gkd_refuses_a_teacher_with_another_tokenizer():
    from lavit.training.gkd import check_shared_vocabulary

    student = build_tiny_tokenizer()
    teacher = build_tiny_tokenizer()
    teacher.add_tokens(["zebra"])
    check_shared_vocabulary(student, build_tiny_tokenizer())
    with pytest.raises(ValueError, match=r"share the student's tokenizer: 1 token strings differ \(e.g. \['zebra'\]"):
        check_shared_vocabulary(student, teacher)


def test_gkd_cuts_only_teacher_head_rows_no_token_reaches():
    from lavit.training.gkd import fit_teacher_head

    teacher, processor = load_model_and_processor("tiny-teacher")
    size = len(processor.tokenizer)
    teacher.resize_token_embeddings(size + 12, mean_resizing=False)  # a head padded past the tokenizer, as 32B's
    states = torch.randn(3, teacher.config.text_config.hidden_size)
    before = teacher.get_output_embeddings()(states)
    assert fit_teacher_head(teacher, size + 4, size) == 8
    assert torch.allclose(teacher.get_output_embeddings()(states), before[:, :size + 4], atol=1e-6)
    assert teacher.config.get_text_config().vocab_size == size + 4
    assert fit_teacher_head(teacher, size + 4, size) == 0
    with pytest.raises(ValueError, match="cannot be compared id by id"):
        fit_teacher_head(teacher, size - 1, size)  # would cut a real token
    with pytest.raises(ValueError, match="cannot be compared id by id"):
        fit_teacher_head(teacher, size + 10, size)  # a teacher head smaller than the student's


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny-teacher store of 8 toy scenes with its top-4 at every answer token (the tiny teacher and student share
    a tokenizer)."""
    root = tmp_path_factory.mktemp("kd")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(8):
        scene = make_scene(rng)
        scene.image.save(root / "images" / f"g{i}.png")
        records.append({"id": f"g{i}", "image": f"g{i}.png", "question": f"what color is the {scene.shape} ?",
                        "answer": scene.color, "bbox": list(scene.bbox)})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run_extract(ExtractConfig(samples=str(root / "samples.jsonl"), image_root=str(root / "images"),
                              out=str(root / "signals"), teacher="tiny-teacher", batch_size=4, max_new_tokens=3,
                              kd_top_k=4))
    return root


def config(store: Path, out: Path, method: str, **kw) -> LavitTrainConfig:
    extra = {"teacher": "tiny-teacher", "gkd_max_new_tokens": 4} if method == "gkd" else {}
    values = dict(data=[str(store / "signals")], image_root=str(store / "images"), output_dir=str(out), method=method,
                  answer_field="teacher_answer", global_batch_size=4, learning_rate=1e-3, warmup_ratio=0.0,
                  logging_steps=1, save_steps=1000, gate_warmup_steps=1, **SMALL, **extra)
    return LavitTrainConfig(**{**values, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kd", "lavit_kd", "gkd"])
def test_each_baseline_trains_and_exports_like_the_other_methods(store, tmp_path, method):
    result = run_training(config(store, tmp_path, method, max_steps=6, learning_rate=3e-3))
    saved = json.loads((tmp_path / "train_results.json").read_text())
    assert saved["settings"]["method"] == method and saved["global_step"] == 6
    curve = [h["loss_kd" if method != "gkd" else "loss"] for h in result["log_history"] if "loss" in h]
    assert len(curve) == 6 and curve[-1] < curve[0], curve
    if method == "gkd":
        assert saved["gkd_teacher_head_rows_dropped"] == 0 and "kd_alignment" not in saved
    else:
        alignment = saved["kd_alignment"]
        assert alignment["positions"] > 8 and alignment["top_k"] == 4 and alignment["unmapped_entries"] == 0
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert entries == ["checkpoint-6", "run_settings.json", "student", "train_log.jsonl", "train_results.json"]
    meta = json.loads((tmp_path / "student" / "lavit.json").read_text())
    assert meta["method"] == method and bool(meta["latent_tokens"]) == (method == "lavit_kd")
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "student")
    assert all(torch.isfinite(p).all() for p in exported.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kd", "gkd"])
def test_resume_reproduces_the_uninterrupted_run(store, tmp_path, method):
    full = run_training(config(store, tmp_path / "full", method, max_steps=4, save_steps=2))
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run_training(config(store, tmp_path / "resumed", method, max_steps=4, save_steps=2, resume="latest"))
    after = [h["loss"] for h in full["log_history"] if "loss" in h and h["step"] > 2]
    again = [h["loss"] for h in resumed["log_history"] if "loss" in h and h["step"] > 2]
    assert len(after) == 2 and again == pytest.approx(after, rel=1e-5)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_kd_at_another_temperature_than_stored_is_refused(store, tmp_path):
    with pytest.raises(ValueError, match=r"stored at temperature 1, this run asks kd_temperature=2"):
        run_training(config(store, tmp_path, "kd", max_steps=1, kd_temperature=2.0))


@pytest.mark.slow
def test_kd_trains_at_a_temperature_float32_cannot_hold_exactly(store, tmp_path):
    """τ = 0.7 goes into the store as float32 (0.699999988...): training at the τ it was extracted at is accepted."""
    run_extract(ExtractConfig(samples=str(store / "samples.jsonl"), image_root=str(store / "images"),
                              out=str(tmp_path / "signals"), teacher="tiny-teacher", batch_size=4, max_new_tokens=3,
                              kd_top_k=4, kd_temperature=0.7))
    trained = config(store, tmp_path / "run", "kd", max_steps=1, kd_temperature=0.7)
    trained.data = [str(tmp_path / "signals")]
    run_training(trained)
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["global_step"] == 1


@pytest.mark.slow
def test_kd_on_the_ground_truth_answers_names_the_rows_it_cannot_pair(store, tmp_path):
    # the tiny teacher's answers are not the samples' answers: no row can be paired with the teacher's tokens
    with pytest.raises(ValueError, match=r"answer does not tokenise into the teacher's stored answer tokens"):
        run_training(config(store, tmp_path, "kd", max_steps=1, answer_field="answer"))


@pytest.mark.slow
def test_lavit_kd_under_deepspeed_keeps_the_teachers_log_probabilities_in_fp32(store, tmp_path):
    """`accelerate launch` with the shipped ZeRO-2 config (2 CPU processes, bf16): DeepSpeed casts every float input
    to bf16, the teacher's log-probabilities are loss targets and stay fp32, like V_sem and the A_traj target."""
    from test_engines import HAS_DEEPSPEED, TRAIN, cpu_config, launch_driver, losses

    if not HAS_DEEPSPEED:
        pytest.skip("deepspeed is not installed (make test installs it)")
    ranks = launch_driver(cpu_config("zero2", tmp_path), tmp_path, store / "signals", store / "images", *TRAIN,
                          "model=tiny", "method=lavit_kd", "answer_field=teacher_answer")
    seen = ranks[0]
    assert seen["engine"] == "DEEPSPEED" and seen["decoder_query_dtype"] == "bfloat16"
    for key in ("loss_ntp", "loss_kd", "loss_ce", "loss_concept", "loss_traj", "kd_logprobs", "v_sem", "traj_target"):
        assert seen[f"{key}_dtype"] == "float32", key
    assert len(losses(tmp_path / "run")) == 4
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert results["world_size"] == 2 and results["kd_alignment"]["unmapped_entries"] == 0
    assert json.loads((tmp_path / "run" / "student" / "lavit.json").read_text())["method"] == "lavit_kd"


@pytest.mark.slow
def test_gkd_under_deepspeed_trains_and_exports(store, tmp_path):
    """TRL's trainer under `accelerate launch` with the shipped ZeRO-2 config (2 CPU processes, bf16): the teacher
    goes through TRL's DeepSpeed preparation, the export gathers the student's weights."""
    from test_engines import HAS_DEEPSPEED, TRAIN, cpu_config, launch_driver, losses

    if not HAS_DEEPSPEED:
        pytest.skip("deepspeed is not installed (make test installs it)")
    ranks = launch_driver(cpu_config("zero2", tmp_path), tmp_path, store / "signals", store / "images", *TRAIN,
                          "model=tiny", "method=gkd", "teacher=tiny-teacher", "gkd_max_new_tokens=4")
    assert ranks[0]["engine"] == "DEEPSPEED" and len(losses(tmp_path / "run")) == 4
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert results["world_size"] == 2 and results["gkd_teacher_head_rows_dropped"] == 0
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "student")
    assert all(torch.isfinite(p).all() for p in exported.parameters())

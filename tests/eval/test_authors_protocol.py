"""`--protocol authors`: the LaViT authors' evaluator re-stated — its prompts on every benchmark, its letter
extraction, and, on a checkpoint saved their way, the prompt ids their evaluator builds and the latent ids their
training assigned; their `--force_lvr` refused with its reason; a Trainer checkpoint folder served with
`--processor`."""

from __future__ import annotations

import json
import shutil

import pytest
from authors_checkpoint import AUTHORS_MAX_PIXELS, AUTHORS_MIN_PIXELS, AUTHORS_TOKENS, save_authors_checkpoint
from fixtures import (
    DEPTH_PROMPT,
    DEPTH_ROWS,
    MMSTAR_MATH,
    MMSTAR_QUESTION,
    VSTAR_ROWS,
    write_blink,
    write_blink_task,
    write_mmstar,
    write_mmvp,
    write_vstar,
)

from lavit.cli import main
from lavit.eval.protocols import get_protocol
from lavit.eval.protocols.authors import authors_letter
from lavit.eval.runner import load_benchmark
from lavit.inference.generate import build_generation_inputs

AUTHORS = get_protocol("authors")
INSTRUCTION = "Answer with the option letter from the given choices directly."


def prompts(benchmark, root) -> dict[str, str]:
    return {it.id: it.prompt for it in load_benchmark(benchmark, root, protocol=AUTHORS)[1]}


def test_prompts_are_their_adapters(tmp_path):
    mmvp = prompts("mmvp", write_mmvp(tmp_path / "MMVP"))
    # the CSV's option line kept as it is, and "option letter" (lmms-eval and lavit say "option's letter")
    assert mmvp["1"] == ("Are the butterfly's wings closer to being open or closed?\n(a) Open (b) Closed\n"
                         f"{INSTRUCTION}")
    blink_root = write_blink(tmp_path / "BLINK", {"Relative_Depth": DEPTH_ROWS}, with_test=False)
    write_blink_task(blink_root, "Counting", [{"choices": ["2", "3", "4"], "answer": "(B)", "prompt": "",
                                               "question": "How many <image> dogs?"}])
    assert set(prompts("blink:Relative_Depth", blink_root).values()) == {DEPTH_PROMPT}  # the prompt column as is
    # an empty prompt column: built from the question and choices, "<image>" removed and stripped
    assert prompts("blink:Counting", blink_root) == {
        "val_Counting_1": f"How many  dogs?\nOptions:\n(A) 2\n(B) 3\n(C) 4\n{INSTRUCTION}"}
    vstar = prompts("vstar", write_vstar(tmp_path / "vstar_bench"))
    assert len(vstar) == len(VSTAR_ROWS) == 7  # all of V*, the relative positions too
    assert vstar["2"] == VSTAR_ROWS[2]["text"]  # the text as it is, its own instruction included
    mmstar = prompts("mmstar", write_mmstar(tmp_path / "MMStar"))
    assert mmstar["0"] == f"{MMSTAR_QUESTION}\n{INSTRUCTION}" and mmstar["3"] == f"{MMSTAR_MATH}\n{INSTRUCTION}"
    asked = write_mmstar(tmp_path / "MMStar2", cells={0: {"question": "Which? <image>\nAnswer with A or B."}})
    assert prompts("mmstar", asked)["0"] == "Which? \nAnswer with A or B."  # already instructed: nothing appended


@pytest.mark.parametrize("output,letter", [
    ("B", "B"), ("(c)", "C"), ("<lvr1><lvr2><lvr3><lvr4>B<|im_end|>", "B"),  # their raw decode, latents and eos kept
    ("The answer is (a) open", "A"), ("Answer: d", "D"), ("The final answer: C.", "C"),
    ("Therefore, the bag is C", "C"), ("B is the correct answer", "B"), ("A dog; the answer is b", "B"),
    ("a dog is on a mat", "A"),  # only lower-case "a"s: the article wins when nothing else is found
    ("A or B", "B"),  # the last standalone letter: no hedge handling
    ("None", "E"),  # under 10 characters: the first letter A–H anywhere ("None" → e)
    ("Yes", "E"), ("I cannot tell from this picture.", None), ("", None), ("(1) left", "E"), ("(1) the left one", None),
])
def test_their_letter_extraction(output, letter):
    assert authors_letter(output) == letter


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_authors_checkpoint(tmp_path_factory.mktemp("authors") / "LaViT-3B")


def their_prompt_ids(processor, prompt: str, images) -> list[int]:
    """What their `LaViTEvaluator.generate` feeds the model (`processor`: `Qwen2VLProcessor.from_pretrained` of the
    checkpoint, as they load it): one user message of the images then the prompt, the chat template with the
    generation prompt, no system message."""
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return processor(text=[text], images=images, padding=True, return_tensors="pt")["input_ids"][0].tolist()


def test_prompt_ids_and_latent_ids_equal_their_evaluator(checkpoint, tmp_path):
    from lavit.eval.models import GenerativeModel

    model = GenerativeModel(str(checkpoint), protocol="authors", latent_tokens=AUTHORS_TOKENS)
    tokenizer = model.processor.tokenizer
    # their training's ids: appended after Qwen's 151 665 tokens, and the table shrunk to len(tokenizer)
    assert tokenizer.convert_tokens_to_ids(AUTHORS_TOKENS) == [151665, 151666, 151667, 151668]
    assert model.model.get_input_embeddings().num_embeddings == len(tokenizer) == 151669
    described = model.describe()
    assert described["latent_mode"] == "natural"  # Qwen's template appends nothing: the model writes its latents
    assert (described["min_pixels"], described["max_pixels"]) == (AUTHORS_MIN_PIXELS, AUTHORS_MAX_PIXELS)
    assert described["decoding"]["repetition_penalty"] == 1.05
    assert described["decoding"]["eos_token_id"] == [151645, 151643]
    assert described["system_prompt"] is None and described["protocol"]["deviations"] == {}
    from transformers import Qwen2VLProcessor

    theirs = Qwen2VLProcessor.from_pretrained(checkpoint)
    items = load_benchmark("mmvp", write_mmvp(tmp_path / "MMVP"), protocol=AUTHORS)[1]
    for item in items:
        images = [ref.open() for ref in item.images]
        ours = build_generation_inputs(model.processor, [images], [item.prompt], latent_tokens=model.latent_tokens,
                                       mode=model.mode, system_prompt=model.system_prompt)["input_ids"][0].tolist()
        assert ours == their_prompt_ids(theirs, item.prompt, images), item.id


def test_their_force_lvr_is_refused_on_a_checkpoint_saved_their_way(checkpoint):
    from lavit.eval.models import GenerativeModel

    with pytest.raises(ValueError, match=r"force_lvr appends '<lvr>' ×4, as the authors' evaluator means to, but .* "
                                         r"has no '<lvr>' .* id 151669, past the 151669-row embedding table"):
        GenerativeModel(str(checkpoint), protocol="authors", force_lvr=True)
    with pytest.raises(ValueError, match="force_lvr is the authors' evaluator's --force_lvr"):
        GenerativeModel(str(checkpoint), protocol="lavit", force_lvr=True)


@pytest.mark.slow
def test_authors_eval_answers_512_tokens_as_their_evaluator(checkpoint, tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    assert main(["eval", "--benchmark", "mmvp", "--data-root", str(root), "--protocol", "authors", "--max-samples",
                 "1", "--model", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "mmvp" / "summary.json").read_text())
    settings = summary["settings"]
    assert settings["max_new_tokens"] == 512 and settings["protocol"]["deviations"] == {}
    assert settings["latent_mode"] == "none"  # no latent tokens named: the checkpoint writes whatever it writes
    assert summary["n"] == 1 and summary["wall_seconds"] > 0


def test_authors_eval_end_to_end_and_a_trainer_checkpoint_with_processor(checkpoint, tmp_path, capsys):
    root = write_mmvp(tmp_path / "MMVP")
    args = ["eval", "--benchmark", "mmvp", "--data-root", str(root), "--protocol", "authors", "--max-samples", "2",
            "--latent-tokens", ",".join(AUTHORS_TOKENS), "--max-new-tokens", "3"]
    assert main([*args, "--model", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    assert "this run departs from protocol authors ({'max_new_tokens': 3})" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "mmvp" / "summary.json").read_text())
    settings = summary["settings"]
    assert settings["protocol"]["name"] == "authors" and settings["protocol"]["version"] == "Svardfox/LaViT@26bf182"
    assert settings["protocol"]["deviations"] == {"max_new_tokens": 3} and settings["max_new_tokens"] == 3
    assert settings["latent_mode"] == "natural" and summary["n"] == 2 and summary["metric"] == "accuracy"
    records = [json.loads(line) for line in (tmp_path / "out" / "mmvp" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["prompt"].endswith(INSTRUCTION) and isinstance(r["raw_output"], str) for r in records)

    trainer = tmp_path / "checkpoint-1000"  # what their Trainer leaves: weights and tokenizer, no processor
    shutil.copytree(checkpoint, trainer)
    for name in ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                 "chat_template.jinja", "chat_template.json"):
        (trainer / name).unlink(missing_ok=True)
    capsys.readouterr()
    assert main([*args, "--model", str(trainer), "--out", str(tmp_path / "trainer")]) == 2
    err = capsys.readouterr().err
    assert "holds no processor" in err and "--processor Qwen/Qwen2.5-VL-3B-Instruct" in err
    assert main([*args, "--model", str(trainer), "--processor", str(checkpoint), "--out", str(tmp_path / "trainer")]) == 0
    again = json.loads((tmp_path / "trainer" / "mmvp" / "summary.json").read_text())
    assert again["settings"]["processor"] == str(checkpoint)
    # the same weights, processor and tokenizer: the same answers
    assert [r["raw_output"] for r in records] == [json.loads(line)["raw_output"] for line in
                                                  (tmp_path / "trainer" / "mmvp" / "predictions.jsonl").read_text()
                                                  .splitlines()]

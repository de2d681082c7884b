"""An exported student runs with its latents in stock clients: the chat template adds them, decoding strips them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lavit.data.examples import LAVIT_SYSTEM_PROMPT
from lavit.eval.models import GenerativeModel
from lavit.models.attention import LAVIT_ATTENTION
from lavit.models.checkpoint import export_chat_template, export_student
from lavit.models.families import FAMILIES, family_named
from lavit.models.families.layout import QWEN_DEFAULT_SYSTEM_PROMPT
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.tiny import STUDENT_SPEC, build_tiny_model, build_tiny_processor, build_tiny_tokenizer

QUESTIONS = ["what color is the circle ?", "which shape is red ?", "what color is the square ?",
             "which shape is blue ?", "what color is the triangle ?", "which shape is green ?"]

# Runs in a fresh interpreter that never imports lavit: what a stock transformers user would do.
STOCK_PIPELINE = """
import json, sys
from PIL import Image
from transformers import pipeline
model_dir, images, questions = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
pipe = pipeline("image-text-to-text", model=model_dir)
answers = []
for image, question in zip(images, questions):
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(image).convert("RGB")},
                                             {"type": "text", "text": question}]}]
    out = pipe(text=messages, return_full_text=False, generate_kwargs={"do_sample": False, "max_new_tokens": 4})
    answers.append(out[0]["generated_text"])
prompt = pipe.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
print(json.dumps({"answers": answers, "prompt": prompt, "modules": sorted(m for m in sys.modules if "lavit" in m)}))
"""


@pytest.fixture(scope="module", params=list(FAMILIES))
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    processor = build_tiny_processor(build_tiny_tokenizer(), family=request.param)
    model = build_tiny_model(processor.tokenizer, STUDENT_SPEC, seed=3, family=request.param,
                             attn_implementation={"text_config": LAVIT_ATTENTION, "vision_config": "sdpa"})
    names = latent_token_names(4)
    ids = add_latent_tokens(processor.tokenizer, model, names)
    template_before = processor.chat_template
    export_student(LavitStudent(model, ids), processor, root / "student",
                   {"latent_tokens": names, "method": "lavit", "system_prompt": LAVIT_SYSTEM_PROMPT})
    assert processor.chat_template == template_before  # the caller's processor is left as it was
    images = []
    for i in range(len(QUESTIONS)):
        path = root / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (84, 112, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    return root / "student", names, images


def test_stock_transformers_pipeline_answers_as_lavit_forced_mode(exported):
    student_dir, names, images = exported
    stock = subprocess.run([sys.executable, "-c", STOCK_PIPELINE, str(student_dir), json.dumps(images),
                            json.dumps(QUESTIONS)], capture_output=True, text=True, check=True)
    result = json.loads(stock.stdout.strip().splitlines()[-1])
    assert result["modules"] == []
    # the stock prompt carries the latents after the generation prompt and the trained system prompt
    assert result["prompt"].endswith("<|im_start|>assistant\n" + "".join(names))
    assert LAVIT_SYSTEM_PROMPT in result["prompt"] and QWEN_DEFAULT_SYSTEM_PROMPT not in result["prompt"]
    pil = [[Image.open(p).convert("RGB")] for p in images]
    forced = GenerativeModel(str(student_dir), mode="forced", max_new_tokens=4).generate(pil, QUESTIONS)
    none = GenerativeModel(str(student_dir), mode="none", max_new_tokens=4).generate(pil, QUESTIONS)
    assert [a.strip() for a in result["answers"]] == [a.strip() for a in forced]
    assert forced != none  # the latents change this model's answers, so a template without them would show
    assert not any(n in a for a in result["answers"] for n in names)


def test_lavit_renders_no_latents_from_the_exported_template(exported):
    student_dir, names, _ = exported
    from transformers import AutoProcessor

    from lavit.data.examples import render_prompt
    from lavit.inference.generate import build_generation_inputs

    processor = AutoProcessor.from_pretrained(student_dir)
    assert "".join(names) not in render_prompt(processor, "q ?", None)
    tokenizer = processor.tokenizer
    latent_ids = tokenizer.convert_tokens_to_ids(names)
    image = Image.new("RGB", (56, 56))
    for mode, count in (("forced", 1), ("masked", 1), ("natural", 0), ("none", 0)):
        inputs = build_generation_inputs(processor, [image], ["q ?"], latent_tokens=names if mode != "none" else [],
                                         mode=mode, system_prompt=None)
        assert [(inputs["input_ids"] == i).sum().item() for i in latent_ids] == [count] * 4, mode
    # the latent tokens are special: decoding with skip_special_tokens drops them
    ids = tokenizer("red" + "".join(names) + "circle", add_special_tokens=False)["input_ids"]
    assert not any(n in tokenizer.decode(ids, skip_special_tokens=True) for n in names)


def test_plain_from_pretrained_loads_the_family_class_with_the_same_weights(exported):
    from transformers import AutoModelForImageTextToText

    from lavit.models.checkpoint import load_model_and_processor

    student_dir, _, _ = exported
    plain = AutoModelForImageTextToText.from_pretrained(student_dir)
    ours, _ = load_model_and_processor(str(student_dir))
    assert type(plain) is type(ours) is family_named(plain.config.model_type).model_class
    theirs = plain.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_template_per_family(family):
    template = build_tiny_processor(build_tiny_tokenizer(), family=family).chat_template
    assert export_chat_template(template, [], "", family_named(family)) == template
    with pytest.raises(ValueError, match="Jinja"):
        export_chat_template(template, ["<lvr_1>"], "Answer {{ like this }}.", family_named(family))
    processor = build_tiny_processor(build_tiny_tokenizer(), family=family)
    processor.chat_template = export_chat_template(template, ["<lvr_1>"], "Be brief .", family_named(family))
    messages = [{"role": "user", "content": [{"type": "text", "text": "q ?"}]}]
    default = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert default.startswith("<|im_start|>system\nBe brief .<|im_end|>\n") and default.endswith("<lvr_1>")
    assert default.count("<|im_start|>system") == 1
    # a client's own system turn replaces the trained one
    own = processor.apply_chat_template([{"role": "system", "content": "Other ."}, *messages],
                                        add_generation_prompt=True, tokenize=False)
    assert "Be brief" not in own and own.count("<|im_start|>system") == 1


def test_export_template_needs_the_default_system_prompt_where_the_family_has_one():
    template = build_tiny_processor(build_tiny_tokenizer()).chat_template
    with pytest.raises(ValueError, match="exactly once"):
        export_chat_template(template.replace(QWEN_DEFAULT_SYSTEM_PROMPT, ""), ["<lvr_1>"], "Be brief.")

"""Both engines decode a checkpoint alike under every protocol's decoding — its generation config's repetition
penalty applied by both, or by neither — and vLLM serves a checkpoint saved the authors' way (an `architectures`
it does not know, extra head tensors, no processor files in a Trainer folder) through lavit's overlay, answering
as transformers does."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from vllm_models import AUTHORS_TOKENS, VLLM_ENGINE, save_authors_style

from lavit.inference.engines import VllmEngine, build_engine

QUESTIONS = ["what color is the circle ?", "which shape is red ?", "how many cat are there ?"]


def images() -> list[list[Image.Image]]:
    return [[Image.fromarray(np.random.default_rng(i).integers(0, 255, (84 + 28 * i, 112, 3), dtype=np.uint8))]
            for i in range(len(QUESTIONS))]


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("authors") / "LaViT"
    save_authors_style(directory)
    return directory


@pytest.mark.parametrize("decoding", ["greedy", "generation_config"])
def test_both_engines_apply_the_same_decoding(authors_dir, decoding):
    settings = {"decoding": decoding, "sampling_from_checkpoint": True}
    transformers = build_engine("transformers", str(authors_dir), dtype="float32", decoding=settings)
    vllm = VllmEngine(str(authors_dir), decoding=settings, **VLLM_ENGINE)
    try:
        assert vllm.decoding == transformers.decoding
        assert vllm.decoding["repetition_penalty"] == (1.3 if decoding == "generation_config" else 1.0)
        for raw in (False, True):  # natural mode: the model writes its latents; raw keeps them (the authors' decode)
            ours = vllm.generate(images(), QUESTIONS, latent_tokens=AUTHORS_TOKENS, mode="natural", max_new_tokens=12,
                                 keep_special_tokens=raw)
            assert ours == transformers.generate(images(), QUESTIONS, latent_tokens=AUTHORS_TOKENS, mode="natural",
                                                 max_new_tokens=12, keep_special_tokens=raw)
        assert len(set(ours)) == len(QUESTIONS)  # answers that vary: the equality means something
    finally:
        vllm.close()


def test_the_penalty_changes_the_answers(authors_dir):
    greedy = VllmEngine(str(authors_dir), **VLLM_ENGINE)
    try:
        plain = greedy.generate(images(), QUESTIONS, latent_tokens=AUTHORS_TOKENS, mode="natural", max_new_tokens=12)
    finally:
        greedy.close()
    penalised = VllmEngine(str(authors_dir), decoding={"decoding": "generation_config"}, **VLLM_ENGINE)
    try:
        assert plain != penalised.generate(images(), QUESTIONS, latent_tokens=AUTHORS_TOKENS, mode="natural",
                                           max_new_tokens=12)
    finally:
        penalised.close()


def test_a_trainer_folder_is_served_with_another_processor(authors_dir, tmp_path):
    bare = tmp_path / "checkpoint-1000"
    save_authors_style(bare, with_processor=False)
    with pytest.raises(FileNotFoundError, match="holds no processor"):
        VllmEngine(str(bare), **VLLM_ENGINE)
    engine = VllmEngine(str(bare), processor=str(authors_dir), **VLLM_ENGINE)
    try:
        ours = engine.generate(images(), QUESTIONS, latent_tokens=AUTHORS_TOKENS, mode="natural", max_new_tokens=8)
    finally:
        engine.close()
    reference = build_engine("transformers", str(bare), dtype="float32", processor=str(authors_dir))
    assert ours == reference.generate(images(), QUESTIONS, latent_tokens=AUTHORS_TOKENS, mode="natural",
                                      max_new_tokens=8)

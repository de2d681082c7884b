import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.tiny import TEACHER_SPEC, build_tiny_model, build_tiny_processor, build_tiny_tokenizer


def test_tiny_models_are_real_and_deterministic():
    tok = build_tiny_tokenizer()
    student, again = build_tiny_model(tok, seed=3), build_tiny_model(tok, seed=3)
    teacher = build_tiny_model(tok, TEACHER_SPEC, seed=3)
    assert isinstance(student, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(build_tiny_processor(tok), Qwen2_5_VLProcessor)
    assert (student.config.text_config.hidden_size, teacher.config.text_config.hidden_size) == (128, 192)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("k", [1, 4, 7])
def test_any_k_latent_tokens(k):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    before = model.get_input_embeddings().num_embeddings
    ids = add_latent_tokens(tok, model, latent_token_names(k))
    assert len(ids) == k and len(set(ids)) == k
    assert model.get_input_embeddings().num_embeddings == before + k
    assert tok.convert_ids_to_tokens(ids) == [f"<lvr_{i}>" for i in range(1, k + 1)]


def test_spare_embedding_rows_are_never_shrunk():
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    model.resize_token_embeddings(len(tok) + 50)  # like Qwen's 151936 rows for 151665 tokens
    add_latent_tokens(tok, model, latent_token_names(4))
    assert model.get_input_embeddings().num_embeddings == len(tok) - 4 + 50


def test_bad_k_and_templates():
    with pytest.raises(ValueError):
        latent_token_names(0)
    with pytest.raises(ValueError, match="distinct"):
        latent_token_names(2, "<lvr>")
    assert latent_token_names(2, "<lvr{i}>") == ["<lvr1>", "<lvr2>"]

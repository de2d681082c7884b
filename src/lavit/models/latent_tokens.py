"""Latent visual tokens `<lvr_1> … <lvr_K>` (paper §4.2: the K "visual information containers")."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_LATENT_TEMPLATE = "<lvr_{i}>"
# An exported LaViT student's chat template appends its latent tokens after the generation prompt, so stock
# clients run it with its latents. lavit places the latents itself (or not: natural and none modes), so it
# renders prompts with this template variable set to false.
LATENT_TEMPLATE_FLAG = "lavit_latents"


def latent_token_names(k: int, template: str = DEFAULT_LATENT_TEMPLATE) -> list[str]:
    """Names of the K latent tokens, numbered from 1 (`<lvr_1>` … `<lvr_K>`)."""
    if k < 1:
        raise ValueError(f"the number of latent tokens must be >= 1, got {k}")
    names = [template.format(i=i) for i in range(1, k + 1)]
    if len(set(names)) != k:
        raise ValueError(f"latent token template {template!r} must contain '{{i}}' to give distinct names")
    return names


def add_latent_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None,
                      names: list[str]) -> list[int]:
    """Register `names` as special tokens and make sure `model` has embedding rows for them.

    Qwen checkpoints keep spare rows (3B: 151 936 rows for 151 665 tokens), so the latent tokens take
    the next spare rows as the checkpoint has them (as the authors' code does) and the matrix is not
    touched; only a model without enough rows is grown, by transformers' mean resizing. It is never
    shrunk.
    """
    tokenizer.add_special_tokens({"additional_special_tokens": names}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(names)
    if len(set(ids)) != len(names) or tokenizer.unk_token_id in ids:
        raise ValueError(f"latent tokens {names} did not get distinct ids: {ids}")
    if model is not None and max(ids) >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return ids

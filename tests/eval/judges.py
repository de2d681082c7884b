"""Tiny judge models whose output is set by their weights, for the judge tests: a fixed answer, or one that
depends on the prompt (`marker_judge`).

A random tiny model emits arbitrary tokens, so these are made to say a chosen text: every decoder layer's
output projections (attention and MLP) are zeroed, so the final hidden state at a position is the normalised
embedding of the token there and the model is a bigram model; the output head then maps each token of the
chain `assistant → word₁ → … → <|im_end|>` to the next one. The generation prompt ends with `assistant`, so
greedy decoding writes exactly `words`, whatever the question (checked when the model is built).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lavit.eval.judge import JudgeQuery, transformers_judge
from lavit.models.families import DEFAULT_FAMILY
from lavit.models.tiny import TinyModelSpec, build_tiny_model, build_tiny_processor, build_tiny_tokenizer

JUDGE_WORDS = ["maybe", "correct", "idea"]  # beyond the tiny vocabulary: "maybe", "yes , it is correct .", "no idea"
_ZEROED = ("o_proj", "down_proj", "out_proj")  # what each decoder layer adds to the residual stream
_LOGIT = 30.0


@torch.no_grad()
def fixed_output_judge(words: list[str], *, family: str = DEFAULT_FAMILY, seed: int = 0):
    """(model, processor) of `family` whose greedy answer to any text-only prompt is ' '.join(words)."""
    processor = build_tiny_processor(build_tiny_tokenizer(JUDGE_WORDS), family=family)
    tokenizer = processor.tokenizer
    model = build_tiny_model(tokenizer, TinyModelSpec(tie_word_embeddings=False), seed=seed, family=family)
    chain = ["assistant", *words, tokenizer.eos_token]
    ids = tokenizer.convert_tokens_to_ids(chain)
    if tokenizer.unk_token_id in ids:
        raise ValueError(f"the chain {chain} needs tokens of the vocabulary")
    wire_bigram_chain(model, ids)
    said = transformers_judge(model, processor, max_new_tokens=len(words) + 2)([JudgeQuery("what is it ?", "red",
                                                                                          "blue")])
    if said != [" ".join(words)]:
        raise AssertionError(f"the fixed judge says {said}, not {' '.join(words)!r}")
    return model, processor


@torch.no_grad()
def wire_bigram_chain(model, ids: list[int]) -> None:
    """Make `model` (untied output head) a bigram model whose greedy continuation of `ids[0]` is `ids[1:]`.

    Each decoder layer's output projections are zeroed, so the final state at a position is the normalised
    embedding of its token, and the head maps each token of the chain to the next one.
    """
    if len(set(ids[:-1])) != len(ids) - 1:
        raise ValueError(f"the chain {ids} needs distinct tokens (but the last)")
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        raise ValueError("the output head is tied to the embeddings: untie it first")
    for name, module in model.named_modules():
        if "language_model" in name and name.split(".")[-1] in _ZEROED:
            module.weight.zero_()
    hidden = model(input_ids=torch.tensor([ids[:-1]]), output_hidden_states=True).hidden_states[-1][0]  # [n, D]
    head = model.get_output_embeddings().weight
    head.zero_()
    for h, target in zip(hidden, ids[1:]):
        head[target] = _LOGIT * h / h.norm() ** 2  # logit(target | source) = _LOGIT


def save_judge(directory: Path, model, processor) -> Path:
    """A checkpoint folder (`judge=DIR`) of a judge built here."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def save_fixed_output_judge(directory: Path, words: list[str], *, family: str = DEFAULT_FAMILY) -> Path:
    return save_judge(directory, *fixed_output_judge(words, family=family))


@torch.no_grad()
def marker_judge(marker: str = "good", *, seed: int = 0):
    """(model, processor) of a tiny judge whose first output token is 'yes' iff `marker` is in the prompt, else
    'no' (read it with max_new_tokens=1).

    Layer 0's attention is made uniform (zero queries and keys) and its values read only the marker's
    embedding, made orthogonal to every other token's; the output projection writes that value along a
    direction `u` orthogonal to all embeddings. At the last prompt position the residual is then
    e(assistant) + s·u with s > 0 iff the marker occurs, and the head turns s > 0 into 'yes', s = 0 into 'no'.
    """
    processor = build_tiny_processor(build_tiny_tokenizer([*JUDGE_WORDS, marker]))
    tokenizer = processor.tokenizer
    model = build_tiny_model(tokenizer, TinyModelSpec(tie_word_embeddings=False), seed=seed)
    embed = model.get_input_embeddings().weight  # [V, D]
    m, assistant, yes, no = tokenizer.convert_tokens_to_ids([marker, "assistant", "yes", "no"])
    others = torch.cat([embed[:m], embed[m + 1:]])
    basis = torch.linalg.qr(others.T).Q  # [D, V-1]: the span of every other embedding
    embed[m] -= basis @ (basis.T @ embed[m])
    full = torch.linalg.qr(embed.T, mode="complete").Q  # [D, D]; the columns past the first V span the complement
    u = full[:, embed.shape[0]]  # orthogonal to every embedding, the marker's included
    layers = [name for name, _ in model.named_modules() if "language_model" in name and name.endswith(".self_attn")]
    for name, module in model.named_modules():
        if "language_model" in name and name.split(".")[-1] in (*_ZEROED, "q_proj", "k_proj", "v_proj"):
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()
    attn = model.get_submodule(layers[0])
    attn.v_proj.weight[0] = embed[m] / embed[m].norm()  # value coordinate 0 (kv head 0) = the marker's share
    attn.o_proj.weight[:, 0] = u  # query head 0 reads kv head 0: its coordinate 0 goes to u
    head = model.get_output_embeddings().weight
    head.zero_()
    e_a = embed[assistant] / embed[assistant].norm() ** 2
    head[no] = _LOGIT * e_a
    head[yes] = (_LOGIT - 1.0) * e_a + 1e4 * u
    return model, processor

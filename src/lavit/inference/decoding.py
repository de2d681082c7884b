"""Decoding settings both generation engines apply alike (DESIGN §2, generation engines; evaluation protocols).

transformers' `generate` merges a checkpoint's `generation_config.json` into every call (Qwen's: do_sample with
top_k 1, repetition_penalty 1.05, eos `<|im_end|>` and `<|endoftext|>`), vLLM does not when given its own
sampling parameters: left alone, the two engines decode one checkpoint differently. So the decoding is resolved
once against the checkpoint (`resolve_decoding`) into a few explicit numbers, recorded with every result, and
each engine is handed exactly those (`transformers_generation_config`, `vllm_sampling_kwargs`):

* `greedy`: argmax, nothing else of the checkpoint's config but its eos tokens.
* `generation_config`: the checkpoint's config as `generate` applies it, greedy: its repetition penalty and eos
  tokens. Any other setting that changes a greedy answer (beam search, n-gram blocking, banned or forced tokens,
  …) is refused, since vLLM could not apply it alike. With `sampling_from_checkpoint` (the authors' evaluator
  passes no do_sample) a config that samples must be greedy in effect — top_k 1 — or the run stops: its numbers
  would change from run to run.

`eos`: `generation_config` stops at the checkpoint's eos ids (the tokenizer's when it names none), `tokenizer` at
the tokenizer's eos only (lmms-eval passes `eos_token_id=tokenizer.eos_token_id`).
"""

from __future__ import annotations

from transformers import GenerationConfig

DECODINGS = ("greedy", "generation_config")
EOS_RULES = ("generation_config", "tokenizer")
# Settings that change a greedy answer which lavit does not carry to vLLM: (name, its neutral value).
_UNCARRIED = (("num_beams", 1), ("no_repeat_ngram_size", 0), ("encoder_no_repeat_ngram_size", 0),
              ("bad_words_ids", None), ("min_length", 0), ("min_new_tokens", 0), ("forced_bos_token_id", None),
              ("forced_eos_token_id", None), ("suppress_tokens", None), ("begin_suppress_tokens", None),
              ("sequence_bias", None), ("exponential_decay_length_penalty", None), ("penalty_alpha", None),
              ("dola_layers", None), ("guidance_scale", None), ("encoder_repetition_penalty", 1.0))


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _neutral(value, neutral) -> bool:
    """Unset (None, an empty list) or at the value that changes nothing."""
    return value is None or value == neutral or (isinstance(value, (list, tuple, dict)) and not value)


def resolve_decoding(generation_config: GenerationConfig | None, tokenizer_eos_id: int | None, *,
                     decoding: str = "greedy", sampling_from_checkpoint: bool = False,
                     eos: str = "generation_config") -> dict:
    """The decoding `decoding` means for a checkpoint with this generation config: `{"decoding", "repetition_penalty",
    "eos_token_id": [ids], "checkpoint": {the config's sampling fields}}`; an error naming the setting when the
    config asks for what both engines cannot apply alike."""
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    if eos not in EOS_RULES:
        raise ValueError(f"eos must be one of {EOS_RULES}, got {eos!r}")
    config = generation_config or GenerationConfig()
    sampling = {k: getattr(config, k, None) for k in ("do_sample", "temperature", "top_k", "top_p",
                                                       "repetition_penalty")}
    eos_ids = _ids(tokenizer_eos_id) if eos == "tokenizer" else (_ids(config.eos_token_id) or _ids(tokenizer_eos_id))
    if not eos_ids:
        raise ValueError("neither the generation config nor the tokenizer names an eos token: answers would run to "
                         "the token limit")
    settings = {"decoding": decoding, "repetition_penalty": 1.0, "eos_token_id": eos_ids, "checkpoint": sampling}
    if decoding == "greedy":
        return settings
    set_fields = [f"{name}={getattr(config, name)!r}" for name, neutral in _UNCARRIED
                  if not _neutral(getattr(config, name, None), neutral)]
    if set_fields:
        raise ValueError(f"the checkpoint's generation config sets {', '.join(set_fields)}, which lavit does not apply "
                         "on both engines alike; evaluate with a protocol that decodes greedily (--protocol lavit) or "
                         "edit generation_config.json")
    if sampling_from_checkpoint and config.do_sample and config.top_k != 1:
        raise ValueError(f"the checkpoint's generation config samples (do_sample=true, temperature={config.temperature}, "
                         f"top_k={config.top_k}, top_p={config.top_p}): an evaluator that keeps it, as the authors' "
                         "does, gives other numbers on every run; only top_k=1 (greedy in effect, as Qwen's) is "
                         "reproducible")
    settings["repetition_penalty"] = float(config.repetition_penalty or 1.0)
    return settings


def transformers_generation_config(settings: dict, *, pad_token_id: int | None,
                                   bos_token_id: int | None = None) -> GenerationConfig:
    """The config to put in `model.generation_config` so `generate` applies `settings` and nothing else (transformers
    fills every setting a call leaves unset from the model's config)."""
    extra = {"repetition_penalty": settings["repetition_penalty"]} if settings["repetition_penalty"] != 1.0 else {}
    return GenerationConfig(eos_token_id=settings["eos_token_id"], pad_token_id=pad_token_id,
                            bos_token_id=bos_token_id, do_sample=False, **extra)


def vllm_sampling_kwargs(settings: dict) -> dict:
    """vLLM `SamplingParams` keywords for `settings` (its stop ids come from the generation config lavit writes
    for it: `vllm_generation_config`)."""
    return {"temperature": 0.0, "repetition_penalty": settings["repetition_penalty"]}


def vllm_generation_config(settings: dict) -> dict:
    """The `generation_config.json` vLLM reads (its stop ids): the resolved eos ids, nothing else."""
    return {"eos_token_id": settings["eos_token_id"]}


def trim_after_eos(token_ids: list[int], eos_ids: list[int]) -> list[int]:
    """The tokens up to and including the first eos (what a batch of one returns; a batch pads after it)."""
    for position, token in enumerate(token_ids):
        if token in eos_ids:
            return token_ids[:position + 1]
    return token_ids

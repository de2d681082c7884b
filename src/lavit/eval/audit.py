"""`lavit audit`: does the answer read the latent block? Paired interventions on the latent tokens of a
forced-mode run, each against the unmodified run (docs/audit.md).

    lavit audit --model runs/lavit_3b/student --benchmark mmvp --data-root data/MMVP --out runs/audit

Interventions: `none` (no latent tokens), `masked` (today's masked mode), and four that replace the states
of latents 1..K−1 at every decoder layer's output in the prompt pass (`lavit.inference.interventions`):
`zero`, `first_repeat`, `random` (another item's states, a seeded derangement) and `swap` (the states of
an item with the same question and another image). Per intervention: accuracy with its Wilson interval,
the paired difference against `forced` (Newcombe interval, exact McNemar p) and the flip rate; for swap
also how often the answer follows the donor's. The collapse of the latent states across items is reported
beside them. Writes OUT/audit.json and OUT/audit.md.

From Python with a loaded model: `audit_items(LoadedModel(model, processor, latent_tokens, system_prompt),
sample_items(jsonl, image_root))` returns the same dictionary without writing anything.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lavit.data.examples import LAVIT_SYSTEM_PROMPT
from lavit.data.run_dir import RunLock, record_settings, refuse_inputs_inside
from lavit.data.samples import (
    DEFAULT_MAX_TEXT_TOKENS,
    Rejection,
    TextLimits,
    answer_text,
    check_text,
    image_box,
    pixel_box,
    read_jsonl_samples,
    resolve_image,
)
from lavit.data.signal_store import write_json_atomic
from lavit.eval.items import EvalItem, ImageRef, kind, text_limits_for
from lavit.eval.matching import answers_match, extract_option_letter, normalize_answer
from lavit.eval.protocols import Protocol, TaskRules
from lavit.eval.protocols.lavit import PROTOCOL as LAVIT_PROTOCOL
from lavit.eval.protocols.lmms_eval import fetch_image
from lavit.eval.runner import load_benchmark
from lavit.eval.stats import accuracy_summary, paired_difference
from lavit.inference.decoding import trim_after_eos
from lavit.inference.diagnostics import LatentNormRecorder, chain, natural_generation
from lavit.inference.generate import build_generation_inputs, generate_answers
from lavit.inference.interventions import (
    LatentStatePatch,
    LatentStateRecorder,
    donor_block,
    first_repeat_block,
    site_offset,
    zero_block,
)
from lavit.models.attention import LAVIT_ATTENTION
from lavit.models.continuous_latents import latent_feedback_of, shared_image_features
from lavit.models.families import family_of

if TYPE_CHECKING:
    from lavit.models.gating import InferenceGate

INTERVENTIONS = ("none", "masked", "zero", "first_repeat", "random", "swap")
STATE_INTERVENTIONS = ("zero", "first_repeat", "random", "swap")
# The 2026 diagnostics (docs/audit.md, "Diagnostics (2026)"); oracle and format_only replace the block's states as
# the state interventions do, in the runs `ARMS` (the oracle of the item's own region, of its swap donor's region).
DIAGNOSTICS = ("emission", "norm_ratio", "sensitivity", "oracle", "format_only")
STATE_DIAGNOSTICS = ("oracle", "format_only")
ARMS = ("oracle", "oracle_donor", "format_only")
ORACLE_FILL = (128, 128, 128)  # mid-grey: the toy world's background, near every Qwen-VL image mean
# system prompts of the emission rate: the checkpoint's own, none given (the template's default turn, if it has
# one), the paper's (appendix C.3, the authors' training prompt)
EMISSION_STYLES = ("checkpoint", "no_system", "paper_system")
AUDIT_JSON = "audit.json"
AUDIT_MD = "audit.md"


@dataclass
class AuditItem:
    """One question every intervention is asked: its image(s), prompt and truth."""

    id: str
    images: list[ImageRef]
    prompt: str
    truth: str
    letters: str = ""  # a multiple-choice item's option letters; '' = free text, scored with `answers_match`
    pair: str | int | None = None  # two items of one pair ask one question of two images (MMVP's pairs)
    skip: str | None = None  # why it cannot be asked: a recorded, counted skip
    read_letter: Callable[[str], str | None] | None = None  # the protocol's letter extraction (default: lavit's)
    # The asked regions [x1, y1, x2, y2] of its one image, in its pixels: what the oracle arm's view keeps.
    boxes: list[list[float]] | None = None
    no_box: str = "the item carries no box"  # why `boxes` is None: the oracle arm leaves the item out and says why

    def extract(self, raw: str) -> str | None:
        """What answers are compared by: the option letter (None when there is none), or the normalised text."""
        if not self.letters:
            return normalize_answer(raw)
        return self.read_letter(raw) if self.read_letter else extract_option_letter(raw, self.letters)

    def is_correct(self, raw: str) -> bool:
        return self.extract(raw) == self.truth if self.letters else answers_match(raw, self.truth)


@dataclass
class LoadedModel:
    """An already-loaded latent-token model to audit from Python (e.g. a toy-world student), as
    `GenerativeModel` offers one."""

    model: torch.nn.Module
    processor: object
    latent_tokens: list[str]
    system_prompt: str | None = None
    max_new_tokens: int = 32
    gate: InferenceGate | None = None
    name: str = "in-memory model"
    protocol: Protocol = LAVIT_PROTOCOL

    def describe(self) -> dict:
        return {"model": self.name, "latent_tokens": list(self.latent_tokens), "system_prompt": self.system_prompt,
                "max_new_tokens": self.max_new_tokens, **({"inference_gate": vars(self.gate)} if self.gate else {}),
                "protocol": {**self.protocol.describe(), "deviations": {}},
                **(feedback.to_meta() if (feedback := latent_feedback_of(self.model)) else {}),
                "dtype": str(self.model.dtype).removeprefix("torch.")}


# -- items ------------------------------------------------------------------------------------------------------
def as_audit_items(items: list[EvalItem], rules: TaskRules | None = None,
                   text_limits: TextLimits | None = None) -> list[AuditItem]:
    """Benchmark items as the audit asks them (each image decoded once to decide its skip, and with `text_limits`
    its texts checked first, as `lavit eval` checks them), scored by the protocol `rules` (default: lavit's). The
    boxes a benchmark publishes (V*) are checked against their image's size (`image_box`); a bad one leaves the
    item askable and out of the oracle arm, with the reason."""
    audit_items = []
    for it in items:
        skip, boxes, no_box = it.problem(text_limits), None, it.no_box
        if skip is None and it.boxes is not None:
            try:
                boxes = [image_box(box, it.images[0].size()) for box in it.boxes]
            except Rejection as rej:
                no_box = str(rej)
        audit_items.append(AuditItem(it.id, it.images, it.prompt, it.answer, it.letters, it.meta.get("pair"), skip,
                                     functools.partial(rules.extract, item=it) if rules else None,
                                     boxes=boxes, no_box=no_box))
    return audit_items


def benchmark_items(benchmark: str, data_root: str | Path, max_samples: int = 0, label_fixes: bool = False,
                    protocol: Protocol = LAVIT_PROTOCOL, text_limits: TextLimits | None = None) -> list[AuditItem]:
    """A benchmark's items as `lavit eval` reads them (`load_benchmark`: asked as `protocol` asks them, label errors
    corrected with `label_fixes`; `text_limits` as in `as_audit_items`)."""
    return as_audit_items(load_benchmark(benchmark, data_root, max_samples, label_fixes, protocol)[1],
                          protocol.rules(benchmark), text_limits)


def sample_items(samples: str | Path, image_root: str | Path, max_samples: int = 0,
                 text_limits: TextLimits | None = None) -> list[AuditItem]:
    """JSONL rows `{id, image, question, answer, [pair], [bbox]}` (images under `image_root`), free-text answers;
    `bbox` ([x1, y1, x2, y2] in the image's pixels, as the toy world writes it) is the region the oracle arm shows.

    Structural errors (bad JSON, no id or image, duplicate ids) are errors naming the line
    (`read_jsonl_samples`); an empty question, a missing answer, a pair key that is neither text nor an
    integer, an image missing, unreadable or outside the root, and with `text_limits` a question or answer holding
    a special token or over the token limit (`check_text`, as extraction checks a sample) make that row a recorded
    skip. A box that is malformed or not inside its image (`pixel_box`) leaves the row askable and out of the
    oracle arm, with the reason recorded.
    """
    parsed = read_jsonl_samples(samples)
    records = [json.loads(line) for line in Path(samples).read_text(encoding="utf-8-sig").splitlines()
               if line.strip()]  # the same lines, for the `pair` key the sample reader does not keep
    items = []
    for sample, record in list(zip(parsed, records))[:max_samples or None]:
        pair, images, skip = record.get("pair"), [], None
        try:
            check_text(sample, text_limits)
            if pair is not None and (isinstance(pair, bool) or not isinstance(pair, (str, int))):
                raise Rejection("cell_invalid", f"'pair' is {kind(pair)}, expected text or an integer")
            images = [ImageRef(path=resolve_image(image_root, sample.image))]
            skip = images[0].problem()
        except Rejection as rej:
            skip = str(rej)
        boxes, no_box = None, "the row has no bbox"
        if skip is None and sample.bbox is not None:
            try:
                boxes = [pixel_box(sample, images[0].size())]
            except Rejection as rej:
                no_box = str(rej)
        items.append(AuditItem(sample.id, images, "" if skip else sample.question,
                               answer_text(sample.answer) or "", pair=pair if not skip else None, skip=skip,
                               boxes=boxes, no_box=no_box))
    return items


# -- donors -----------------------------------------------------------------------------------------------------
def derangement(n: int, rng: np.random.Generator) -> list[int]:
    """A permutation of range(n) drawn uniformly among those without a fixed point (n ≥ 2; e draws on average)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least two items, got {n}")
    while True:
        perm = rng.permutation(n)
        if (perm != np.arange(n)).all():
            return perm.tolist()


def swap_donors(items: list[AuditItem], rng: np.random.Generator) -> dict[str, dict]:
    """For each item `{donor, rule}`: an item asking the same question of a different image — the other item of
    its pair (rule 'pair') where items carry a pair key, else one drawn among the items with an identical prompt
    ('same_prompt') — or donor None and the rule saying why there is none."""
    by_pair: dict = {}
    by_prompt: dict[str, list[AuditItem]] = {}
    for it in items:
        if it.pair is not None:
            by_pair.setdefault(it.pair, []).append(it)
        by_prompt.setdefault(it.prompt, []).append(it)
    donors = {}
    for it in items:
        if it.pair is not None:
            group = by_pair[it.pair]
            others = [o for o in group if o is not it and o.images != it.images]
            if len(group) != 2:
                donors[it.id] = {"donor": None, "rule": f"pair {it.pair!r} has {len(group)} askable items, not 2"}
            elif not others:
                donors[it.id] = {"donor": None, "rule": f"pair {it.pair!r} shows one image twice"}
            else:
                donors[it.id] = {"donor": others[0].id, "rule": "pair"}
            continue
        others = [o for o in by_prompt[it.prompt] if o is not it and o.images != it.images]
        donors[it.id] = ({"donor": others[int(rng.integers(len(others)))].id, "rule": "same_prompt"} if others
                         else {"donor": None, "rule": "no other item asks this prompt of another image"})
    return donors


# -- statistics -------------------------------------------------------------------------------------------------
def collapse_stats(vectors: torch.Tensor) -> dict:
    """How spread out states [N, D] are: the mean cosine similarity over all N(N−1)/2 pairs, and the effective
    rank (Roy & Vetterli 2007) exp(H(p)), p the singular values of the mean-centred matrix over their sum
    (1 for states on one line, D for isotropic ones; 0 when all N states are equal). None for N < 2."""
    x = vectors.detach().double().cpu()  # [N, D]
    n = x.shape[0]
    if n < 2:
        return {"vectors": n, "mean_pairwise_cosine": None, "effective_rank": None}
    norms = x.norm(dim=1)
    if not torch.isfinite(x).all() or (norms == 0).any():
        raise ValueError("latent states hold a non-finite or zero vector: cosine similarity is undefined")
    total = (x / norms[:, None]).sum(dim=0)  # [D]
    cosine = ((total @ total).item() - n) / (n * (n - 1))  # Σ_{i≠j} u_i·u_j = |Σ u_i|² − n
    singular = torch.linalg.svdvals(x - x.mean(dim=0))
    if singular.sum() == 0:
        rank = 0.0
    else:
        p = singular / singular.sum()
        p = p[p > 0]
        rank = math.exp(-(p * p.log()).sum().item())
    return {"vectors": n, "mean_pairwise_cosine": cosine, "effective_rank": rank}


# -- the 2026 diagnostics: pure parts ----------------------------------------------------------------------------
def choose_diagnostics(names: list[str] | tuple[str, ...] | None) -> list[str]:
    """The diagnostics named (None: all of `DIAGNOSTICS`, an empty list: none), checked, in the audit's order."""
    chosen = list(DIAGNOSTICS) if names is None else list(names)
    unknown = [c for c in chosen if c not in DIAGNOSTICS]
    if unknown:
        raise ValueError(f"unknown diagnostics {unknown}; choose from {', '.join(DIAGNOSTICS)}")
    return [c for c in DIAGNOSTICS if c in chosen]


def region_only(image: Image.Image, boxes: list[list[float]],
                fill: tuple[int, int, int] = ORACLE_FILL) -> Image.Image:
    """The oracle's view: `image` with every pixel outside all of `boxes` [[x1, y1, x2, y2], ...] (its pixels) set
    to `fill`. A pixel a box touches is kept whole: columns floor(x1) .. ceil(x2) − 1, rows floor(y1) ..
    ceil(y2) − 1."""
    view = Image.new("RGB", image.size, fill)
    for box in boxes:
        x1, y1, x2, y2 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
        view.paste(image.crop((x1, y1, x2, y2)), (x1, y1))
    return view


def latent_emission(row: list[int], latent_ids: list[int], eos_ids: list[int]) -> dict:
    """What one natural-mode continuation (generated ids; what follows its first eos is padding) did with the K
    latents: `count`, the latent tokens it holds; `all_first`, whether its first K tokens are the K latents in order
    (the layout the student was trained on: all K before the answer)."""
    row = trim_after_eos(list(row), eos_ids)
    return {"count": sum(token in latent_ids for token in row), "all_first": row[:len(latent_ids)] == list(latent_ids)}


def norm_ratios(input_norms: torch.Tensor, final_norms: torch.Tensor, layer_norms: torch.Tensor,
                text: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per prompt, the latents' norms over the mean norm of its text tokens' input embeddings ē.

    input_norms [B, S]: ‖x‖ of the first decoder layer's input (token embeddings; at a continuous student's latents
    2..K the fed-back states); final_norms [B, K]: ‖h‖ of the final hidden states (after the final norm) at the K
    latents; layer_norms [L, B, K]: each decoder layer's output at the K latents; text [B, S]: the prompt's text
    tokens (real, neither image nor latent). Returns `text_norm` [B] (ē), `input` [B, K], `final` [B, K],
    `layers` [L, B, K], each over ē.
    """
    k = final_norms.shape[1]
    text = text.to(input_norms.device)
    ebar = (input_norms * text).sum(dim=1) / text.sum(dim=1)  # [B]
    return {"text_norm": ebar, "input": input_norms[:, -k:] / ebar[:, None], "final": final_norms / ebar[:, None],
            "layers": layer_norms / ebar[None, :, None]}


def relative_change(states: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """‖states − other‖ / ‖states‖ over the last two dimensions ([..., N, D] → [...], Frobenius norms): how far the
    states move when the input changes, in units of their own size."""
    size = states.double().norm(dim=(-2, -1))
    if (size == 0).any():
        raise ValueError("relative change of an all-zero state is undefined")
    return (states.double() - other.double()).norm(dim=(-2, -1)) / size


def sensitivity_summary(own: dict[str, torch.Tensor], donors: dict[str, dict], k: int) -> dict:
    """Input sensitivity over the swap pairs: for each item with a donor (same question, another image), the relative
    change (`relative_change`) at every layer of the latent block (latents 1..K−1 together), of the readout and of the
    last prompt token, from `own` (item → [L, K+1, D]: last prompt token, the K latents, as `LatentStateRecorder`
    keeps them); means over items per layer, and at the last layer."""
    pairs = [(i, d["donor"]) for i, d in donors.items() if d["donor"] is not None]
    if not pairs:
        return {"applicable": False, "reason": "no item has a swap donor (no pair key or identical prompt on another "
                                               "image)"}
    a = torch.stack([own[i] for i, _ in pairs])  # [N, L, K+1, D]
    b = torch.stack([own[j] for _, j in pairs])
    parts = {"latents": slice(1, k) if k >= 2 else None, "readout": slice(k, k + 1),
             "last_prompt_token": slice(0, 1)}
    result: dict = {"applicable": True, "pairs": len(pairs), "no_donor": len(donors) - len(pairs)}
    for name, columns in parts.items():
        if columns is None:
            result[name] = None
            continue
        per_layer = relative_change(a[:, :, columns], b[:, :, columns]).mean(dim=0)  # [L]
        result[name] = {"per_layer": per_layer.tolist(), "last_layer": per_layer[-1].item()}
    readout = result["readout"]["last_layer"]
    result["latents_over_readout"] = (result["latents"]["last_layer"] / readout
                                      if result["latents"] is not None and readout > 0 else None)
    return result


# -- the audit --------------------------------------------------------------------------------------------------
def choose_interventions(names: list[str] | None) -> list[str]:
    """The interventions named (None: all), checked, in the audit's order."""
    chosen = list(INTERVENTIONS) if names is None else list(names)
    unknown = [c for c in chosen if c not in INTERVENTIONS]
    if unknown:
        raise ValueError(f"unknown interventions {unknown} (forced is the reference, always run); choose from "
                         f"{', '.join(INTERVENTIONS)}")
    if not chosen:
        raise ValueError(f"name at least one intervention of {', '.join(INTERVENTIONS)}")
    return [c for c in INTERVENTIONS if c in chosen]


def _choose(interventions, model) -> list[str]:
    """`choose_interventions`, refusing those this model cannot serve."""
    chosen = choose_interventions(interventions)
    net = model.model
    needs_mask = [c for c in chosen if c == "masked" or c in STATE_INTERVENTIONS]
    if needs_mask and family_of(net).is_hybrid(net.config.text_config):
        raise ValueError(f"interventions {needs_mask} cannot reach the latent block of a {net.config.model_type} "
                         "model: its linear-attention layers pass the latents on in their recurrent state, which no "
                         "mask or layer-output hook reaches; audit it with --interventions none")
    if "masked" in chosen and net.config.text_config._attn_implementation != LAVIT_ATTENTION:
        raise ValueError(f"intervention 'masked' needs the text model on attn_implementation='{LAVIT_ATTENTION}'")
    return chosen


def _not_applicable(chosen: list[str], k: int, n: int) -> dict[str, str]:
    reasons = {}
    for name in chosen:
        if name in STATE_INTERVENTIONS and k < 2:
            reasons[name] = (f"K = {k}: the only latent is the readout, whose state is the answer's first logits; "
                             "there is no latent block to replace")
        elif name == "first_repeat" and k < 3:
            reasons[name] = "K = 2: the block is latent 1 alone, which repeating it leaves as it is"
        elif name == "random" and n < 2:
            reasons[name] = f"{n} askable item: no other item to take states from"
    return reasons


def _choose_diagnostics(names, model, hide_latents: bool) -> list[str]:
    """`choose_diagnostics`, refusing those this model or the negative control cannot serve."""
    chosen = choose_diagnostics(names)
    net = model.model
    state = [c for c in chosen if c in STATE_DIAGNOSTICS]
    if state and family_of(net).is_hybrid(net.config.text_config):
        raise ValueError(f"diagnostics {state} replace the latent block's states, which cannot reach a "
                         f"{net.config.model_type} model's latents: its linear-attention layers pass them on in their "
                         "recurrent state; leave them out (emission, norm_ratio and sensitivity run)")
    if hide_latents and "emission" in chosen:
        raise ValueError("hide_latents (the negative control) hides the latents of forced runs; the emission rate is "
                         "measured in natural mode, where there is nothing to hide: leave out emission")
    return chosen


def _oracle_view_problem(item: AuditItem) -> str | None:
    """Why `item` has no oracle view, or None."""
    if item.boxes is None:
        return item.no_box
    if len(item.images) != 1:
        return f"a box on an item of {len(item.images)} images names no one image"
    return None


def _arm_sources(wanted: list[str], ready: list[AuditItem], k: int,
                 pairs: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """Where each diagnostic arm takes an item's replacement block from, in the form of `donors`
    (`{donor: a key of the recorded blocks, or None; rule: why}`; `view`: the item whose oracle view it is), and the
    arms that cannot run, with the reason. The arms' keys are tuples, ('oracle', item) and ('mean',), which no item
    id (a string) can be."""
    arms = [a for a in ARMS if (a.startswith("oracle") and "oracle" in wanted) or a in wanted]
    if k < 2:
        return {}, {a: f"K = {k}: the only latent is the readout, whose state is the answer's first logits; there is "
                       "no latent block to replace" for a in arms}
    by_id = {it.id: it for it in ready}
    sources: dict[str, dict] = {}
    if "oracle" in arms:
        sources["oracle"] = {it.id: ({"donor": ("oracle", it.id), "view": it.id, "rule": "its own region"}
                                     if _oracle_view_problem(it) is None else
                                     {"donor": None, "view": None, "rule": _oracle_view_problem(it)}) for it in ready}
        donor_views = {}
        for it in ready:
            donor = pairs[it.id]["donor"]
            problem = pairs[it.id]["rule"] if donor is None else _oracle_view_problem(by_id[donor])
            donor_views[it.id] = ({"donor": ("oracle", donor), "view": donor, "rule": "its swap donor's region"}
                                  if donor is not None and problem is None else
                                  {"donor": None, "view": None,
                                   "rule": problem if donor is None else f"swap donor {donor}: {problem}"})
        sources["oracle_donor"] = donor_views
    if "format_only" in arms:
        sources["format_only"] = {it.id: {"donor": ("mean",), "view": None, "rule": "the block's mean over the items"}
                                  for it in ready}
    reasons = {}
    for arm in list(sources):
        if not any(s["donor"] for s in sources[arm].values()):
            why = Counter(s["rule"] for s in sources[arm].values()).most_common(1)[0][0]
            reasons[arm] = f"no item has a source ({len(ready)} items; e.g. {why})"
            del sources[arm]
    return sources, reasons


def audit_items(model, items: list[AuditItem], *, interventions: list[str] | None = None, seed: int = 0,
                batch_size: int = 8, desc: str = "audit", hide_latents: bool = False,
                max_new_tokens: int | None = None, diagnostics: list[str] | tuple[str, ...] | None = ()) -> dict:
    """Run the reference (`forced`) and each chosen intervention on `items`; the audit's results (no files).

    `model` is a `GenerativeModel` loaded in forced mode or a `LoadedModel`: `.model`, `.processor`,
    `.latent_tokens`, `.system_prompt`, `.max_new_tokens`, `.protocol` (and `.gate`, if any); `max_new_tokens`
    overrides the model's (None with None: 32). `hide_latents` runs the
    reference and every state intervention with the latents hidden from everything after them (masked mode):
    the audit's negative control, under which no state intervention can change an answer. `diagnostics`: the 2026
    diagnostics to add (`DIAGNOSTICS`; default none, None all), in `diagnostics` of the result.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if getattr(model, "mode", "forced") != "forced":
        raise ValueError(f"the audit intervenes on forced-mode runs; the model is loaded in mode {model.mode!r}")
    if not model.latent_tokens:
        raise ValueError("the audit needs a latent-token checkpoint: this model has no latent tokens (pass "
                         "--latent-tokens for a checkpoint without lavit.json)")
    start = time.time()
    chosen = _choose(interventions, model)
    if hide_latents and any(c in ("none", "masked") for c in chosen):
        raise ValueError("hide_latents (the negative control) audits the state interventions only: leave out none "
                         "and masked")
    wanted = _choose_diagnostics(diagnostics, model, hide_latents)
    ready = [it for it in items if it.skip is None]
    if not ready:
        raise ValueError(f"no item can be asked: all {len(items)} are skipped "
                         f"({dict(Counter(it.skip.split(':')[0] for it in items))})")
    ids = [it.id for it in ready]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    net, latent_ids = model.model, model.processor.tokenizer.convert_tokens_to_ids(model.latent_tokens)
    k = len(latent_ids)
    not_applicable = _not_applicable(chosen, k, len(ready))
    rng = np.random.default_rng(seed)
    donors: dict[str, dict] = {}
    if "random" in chosen and "random" not in not_applicable:
        perm = derangement(len(ready), rng)
        donors["random"] = {it.id: {"donor": ready[j].id, "rule": "derangement"} for it, j in zip(ready, perm)}
    if "swap" in chosen and "swap" not in not_applicable:
        donors["swap"] = swap_donors(ready, rng)
        if not any(d["donor"] for d in donors["swap"].values()):
            not_applicable["swap"] = "no item has a donor (no pair key or identical prompt on another image)"
    # the diagnostics' pairs are swap's (drawn at the same point of the seed's stream whether or not swap runs)
    pairs = donors.get("swap") or (swap_donors(ready, rng) if {"sensitivity", "oracle"} & set(wanted) else {})
    sources, arm_reasons = _arm_sources(wanted, ready, k, pairs)
    donors.update(sources)  # the arms replace the block as swap does, from the blocks recorded under their keys
    runs = ["forced", *(c for c in chosen if c not in not_applicable), *sources]
    asked = {name: {it.id for it in ready if name not in donors or donors[name][it.id]["donor"]} for name in runs}
    by_id = {it.id: it for it in ready}
    tokens = max_new_tokens or model.max_new_tokens or model.protocol.default_max_new_tokens
    protocol = model.protocol
    transport = fetch_image if protocol.image_transport == "qwen_vl_utils" else (lambda image: image)

    built: dict[tuple, dict] = {}  # one batch's model inputs per (items, with latents?): built once per batch

    def generate(batch: list[AuditItem], mode: str, intervention=None, oracle: bool = False) -> list[str]:
        mode = "masked" if hide_latents and mode == "forced" else mode
        key = (tuple(it.id for it in batch), mode != "none", oracle)  # forced and masked prompts are the same tokens
        if key not in built:
            images = [[region_only(ref.open(), it.boxes) if oracle else ref.open() for ref in it.images]
                      for it in batch]
            built[key] = build_generation_inputs(model.processor, [[transport(im) for im in row] for row in images],
                                                 [it.prompt for it in batch], latent_tokens=model.latent_tokens,
                                                 mode=mode, system_prompt=model.system_prompt)
        return generate_answers(net, model.processor, None, [it.prompt for it in batch],
                                latent_tokens=model.latent_tokens, mode=mode, system_prompt=model.system_prompt,
                                max_new_tokens=tokens, gate=getattr(model, "gate", None),
                                intervention=intervention, inputs=built[key],
                                keep_special_tokens=protocol.keep_special_tokens)

    raw: dict[str, dict[str, str]] = {name: {} for name in runs}
    block: dict = {}  # item → [L, K−1, D], the donors' states (and the arms', keyed ('oracle', item) and ('mean',))
    final: dict[str, torch.Tensor] = {}  # item → [K+1, D]: last layer, last prompt token then the K latents
    own: dict[str, torch.Tensor] = {}  # item → [L, K+1, D] (decoder layers), for the input sensitivity
    keep_block = any(name in donors for name in runs)
    recorder = LatentStateRecorder(net, latent_ids)
    norms = LatentNormRecorder(net, latent_ids) if "norm_ratio" in wanted else None
    ratios: list[dict[str, torch.Tensor]] = []
    views = [it for it in ready if _oracle_view_problem(it) is None] if {"oracle", "oracle_donor"} & set(sources) else []
    oracle_raw: dict[str, str] = {}  # item → its answer in the forced run on its oracle view
    styles = _emission_styles(model) if "emission" in wanted else {}
    emission_runs = len(ready) * sum(spec["same_as"] is None for spec in styles.values())
    with tqdm(total=sum(len(v) for v in asked.values()) + len(views) + emission_runs, desc=desc, unit="item") as bar:
        for i in range(0, len(ready), batch_size):
            batch = ready[i:i + batch_size]
            answers = generate(batch, "forced", chain(recorder, norms))
            states = recorder.states.cpu()  # [L, B, K+1, D]
            layers = states[site_offset(net):]  # [L, B, K+1, D]: the decoder layers' outputs (no fed-back site)
            if norms is not None:
                ratios.append(norm_ratios(norms.input_norms, norms.final_norms, layers[:, :, 1:].float().norm(dim=-1),
                                          norms.text_tokens))
            for b, (it, answer) in enumerate(zip(batch, answers)):
                raw["forced"][it.id] = answer
                final[it.id] = states[-1, b].clone()  # a copy: a view would keep every layer alive
                if keep_block:
                    block[it.id] = states[:, b, 1:k].clone()
                if "sensitivity" in wanted:
                    own[it.id] = layers[:, b].clone()
            bar.update(len(batch))
            built.clear()
        # The oracle's views: forced runs on the asked region alone, their blocks recorded as donors' are
        for i in range(0, len(views), batch_size):
            batch = views[i:i + batch_size]
            answers = generate(batch, "forced", recorder, oracle=True)
            states = recorder.states.cpu()  # [L, B, K+1, D]
            for b, (it, answer) in enumerate(zip(batch, answers)):
                oracle_raw[it.id] = answer
                block[("oracle", it.id)] = states[:, b, 1:k].clone()
            bar.update(len(batch))
            built.clear()
        if "format_only" in sources:  # one content-free block for every item: the mean of the items' own blocks
            block[("mean",)] = torch.stack([block[i] for i in ids]).float().mean(dim=0)  # [L, K−1, D]
        # Per batch, every intervention on the same inputs, the vision tower run once per prompt form
        for i in range(0, len(ready), batch_size):
            batch = ready[i:i + batch_size]
            with shared_image_features(net):
                for name in runs[1:]:
                    todo = [it for it in batch if it.id in asked[name]]
                    if not todo:
                        continue
                    if name in ("none", "masked"):
                        answers = generate(todo, name)
                    else:
                        if name in donors:
                            replace = donor_block(torch.stack([block[donors[name][it.id]["donor"]] for it in todo],
                                                              dim=1))  # [L, B, K−1, D]
                        else:
                            replace = zero_block if name == "zero" else first_repeat_block
                        answers = generate(todo, "forced", LatentStatePatch(net, latent_ids, replace))
                    raw[name].update({it.id: a for it, a in zip(todo, answers)})
                    bar.update(len(todo))
            built.clear()
        natural = _natural_runs(model, ready, styles, latent_ids, tokens + k, batch_size, transport, bar)

    scored = {name: {i: {"raw": a, "extracted": by_id[i].extract(a), "correct": by_id[i].is_correct(a)}
                     for i, a in got.items()} for name, got in raw.items()}
    table = [_row(name, scored, donors.get(name), len(ready)) for name in runs if name not in ARMS]
    table += [{"intervention": name, "applicable": False, "reason": why} for name, why in not_applicable.items()]
    table.sort(key=lambda r: (["forced", *INTERVENTIONS].index(r["intervention"])))
    stacked = torch.stack([final[i] for i in ids])  # [N, K+1, D]
    collapse = {"layer": len(family_of(net).decoder_layers(net)) - 1, "items": len(ids),
                "latents": collapse_stats(stacked[:, 1:k].reshape(-1, stacked.shape[-1])) if k >= 2 else None,
                "readout": collapse_stats(stacked[:, k]), "last_prompt_token": collapse_stats(stacked[:, 0])}
    oracle_view = {i: {"raw": a, "extracted": by_id[i].extract(a), "correct": by_id[i].is_correct(a)}
                   for i, a in oracle_raw.items()}
    found = {"chosen": wanted}
    if wanted:
        found |= _diagnostics_found(wanted, k, scored, sources, arm_reasons, oracle_view, natural, styles, ratios,
                                    own, pairs, len(ready))
    per_item = [{"id": it.id, "truth": it.truth, "pair": it.pair,
                 "donors": {name: donors[name][it.id]["donor"] for name in donors if name in INTERVENTIONS},
                 "answers": {name: scored[name][it.id] for name in runs if it.id in scored[name]},
                 **({"boxes": it.boxes, "oracle_view": oracle_view[it.id]} if it.id in oracle_view else {}),
                 **({"natural": {style: got[it.id] for style, got in natural.items()}} if natural else {})}
                for it in ready]
    return {"latent_tokens": list(model.latent_tokens), "k": k, "seed": seed, "interventions": chosen,
            "hide_latents": hide_latents,
            "n_items": len(items), "n_asked": len(ready), "skipped": [{"id": it.id, "skipped": it.skip}
                                                                      for it in items if it.skip is not None],
            "skipped_by_reason": dict(Counter(it.skip.split(":")[0] for it in items if it.skip is not None)),
            "donors": {name: {"seed": seed, "by_item": d} for name, d in donors.items() if name in INTERVENTIONS},
            "table": table, "collapse": collapse, "diagnostics": found, "items": per_item,
            "wall_seconds": time.time() - start}


def _row(name: str, scored: dict[str, dict[str, dict]], donors: dict | None, n_ready: int) -> dict:
    answers, forced = scored[name], scored["forced"]
    ids = list(answers)
    row = {"intervention": name, "applicable": True, **accuracy_summary([answers[i]["correct"] for i in ids])}
    if name == "forced":
        return row
    row["vs_forced"] = paired_difference([answers[i]["correct"] for i in ids], [forced[i]["correct"] for i in ids])
    row["flip_rate"] = sum(answers[i]["extracted"] != forced[i]["extracted"] for i in ids) / len(ids)
    if name == "swap":
        row["no_donor"] = n_ready - len(ids)
        row["follows_donor"] = _follows(answers, forced, {i: forced[donors[i]["donor"]]["extracted"] for i in ids})
    return row


def _follows(answers: dict[str, dict], forced: dict[str, dict], target: dict[str, str | None]) -> dict:
    """Over the items of `answers` whose own forced answer differs from their `target` answer (the swap donor's, the
    oracle view's), both an answer (no letter, or an empty text, is none): does the intervened answer become the
    target's?"""
    contrast = [i for i in answers if forced[i]["extracted"] not in (None, "")
                and target[i] not in (None, "", forced[i]["extracted"])]
    followed = sum(answers[i]["extracted"] == target[i] for i in contrast)
    return {"n": len(contrast), "followed": followed, "rate": followed / len(contrast) if contrast else None}


def _emission_styles(model) -> dict[str, dict]:
    """The emission rate's prompt styles (`EMISSION_STYLES`): each one's system prompt, and `same_as` the earlier
    style whose prompts it renders identically (run once, reported for both)."""
    prompts = {"checkpoint": model.system_prompt or None, "no_system": None, "paper_system": LAVIT_SYSTEM_PROMPT}
    styles: dict[str, dict] = {}
    for name in EMISSION_STYLES:
        same = next((other for other, spec in styles.items()
                     if spec["same_as"] is None and spec["system_prompt"] == prompts[name]), None)
        styles[name] = {"system_prompt": prompts[name], "same_as": same}
    return styles


def _natural_runs(model, ready: list[AuditItem], styles: dict[str, dict], latent_ids: list[int], max_new_tokens: int,
                  batch_size: int, transport, bar) -> dict[str, dict[str, dict]]:
    """Each style's natural-mode run (the prompt without latents; `max_new_tokens` leaves room for K latents and the
    answer): per item the latents it wrote (`latent_emission`) and its answer, latents dropped, scored as the forced
    answers are."""
    net, tokenizer = model.model, model.processor.tokenizer
    eos = net.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    runs: dict[str, dict[str, dict]] = {}
    for style, spec in styles.items():
        if spec["same_as"] is not None:
            continue
        got: dict[str, dict] = {}
        for i in range(0, len(ready), batch_size):
            batch = ready[i:i + batch_size]
            inputs = build_generation_inputs(model.processor, [[transport(ref.open()) for ref in it.images]
                                                               for it in batch], [it.prompt for it in batch],
                                             latent_tokens=model.latent_tokens, mode="natural",
                                             system_prompt=spec["system_prompt"])
            rows = natural_generation(net, tokenizer, inputs, latent_ids=latent_ids, max_new_tokens=max_new_tokens,
                                      gate=getattr(model, "gate", None))
            for it, row in zip(batch, rows.tolist()):
                if model.protocol.keep_special_tokens:  # the raw answer, as generate_answers gives it, latents out
                    answer = tokenizer.decode([t for t in trim_after_eos(row, eos_ids) if t not in latent_ids],
                                              skip_special_tokens=False)
                else:
                    answer = tokenizer.decode([t for t in row if t not in latent_ids], skip_special_tokens=True).strip()
                got[it.id] = {**latent_emission(row, latent_ids, eos_ids), "raw": answer,
                              "extracted": it.extract(answer), "correct": it.is_correct(answer)}
            bar.update(len(batch))
        runs[style] = got
    return runs


def _arm_row(name: str, scored: dict[str, dict[str, dict]], sources: dict[str, dict],
             oracle_view: dict[str, dict], n_ready: int) -> dict:
    """A diagnostic arm's row: as an intervention's (`_row`), with `no_source` (items left out: no box, no donor);
    for the oracle arms `follows_oracle`, for format_only `vs_none` (the paired difference against `none`, when run)."""
    row = {"arm": name, **{key: v for key, v in _row(name, scored, None, n_ready).items() if key != "intervention"}}
    answers, forced = scored[name], scored["forced"]
    ids = list(answers)
    row["no_source"] = n_ready - len(ids)
    if name in ("oracle", "oracle_donor"):
        view = {i: oracle_view[sources[i]["view"]]["extracted"] for i in ids}
        row["follows_oracle"] = _follows(answers, forced, view)
    elif "none" in scored:
        common = [i for i in ids if i in scored["none"]]
        row["vs_none"] = paired_difference([answers[i]["correct"] for i in common],
                                           [scored["none"][i]["correct"] for i in common])
    return row


def _diagnostics_found(wanted: list[str], k: int, scored: dict[str, dict[str, dict]], sources: dict[str, dict],
                       arm_reasons: dict[str, str], oracle_view: dict[str, dict], natural: dict[str, dict],
                       styles: dict[str, dict], ratios: list[dict[str, torch.Tensor]], own: dict[str, torch.Tensor],
                       pairs: dict[str, dict], n_ready: int) -> dict:
    """The diagnostics' part of the audit's result (docs/audit.md, "Diagnostics (2026)")."""
    found: dict = {}
    if "emission" in wanted:
        found["emission"] = {}
        for style, spec in styles.items():
            got = natural[spec["same_as"] or style]
            found["emission"][style] = {
                "system_prompt": spec["system_prompt"], "same_as": spec["same_as"], "n": len(got),
                "all_latents_first": sum(g["all_first"] for g in got.values()) / len(got),
                "any_latent": sum(g["count"] > 0 for g in got.values()) / len(got),
                "mean_latents": sum(g["count"] for g in got.values()) / len(got),
                "natural_accuracy": accuracy_summary([g["correct"] for g in got.values()])}
    if "norm_ratio" in wanted:
        inputs, finals = torch.cat([r["input"] for r in ratios]), torch.cat([r["final"] for r in ratios])  # [N, K]
        layers = torch.cat([r["layers"] for r in ratios], dim=1)  # [L, N, K]
        found["norm_ratio"] = {"items": inputs.shape[0],
                               "text_embedding_norm": torch.cat([r["text_norm"] for r in ratios]).mean().item(),
                               "input": {"per_latent": inputs.mean(dim=0).tolist(), "mean": inputs.mean().item()},
                               "final": {"per_latent": finals.mean(dim=0).tolist(), "mean": finals.mean().item()},
                               "layer_output": {"per_layer": layers.mean(dim=(1, 2)).tolist()}}
    if "sensitivity" in wanted:
        found["sensitivity"] = sensitivity_summary(own, pairs, k)
    if "oracle" in wanted and oracle_view:
        ids = list(oracle_view)
        found["oracle_view"] = {"fill": list(ORACLE_FILL), **accuracy_summary([oracle_view[i]["correct"] for i in ids]),
                                "vs_forced": paired_difference([oracle_view[i]["correct"] for i in ids],
                                                               [scored["forced"][i]["correct"] for i in ids])}
    table = [_arm_row(arm, scored, sources[arm], oracle_view, n_ready) for arm in ARMS if arm in sources]
    table += [{"arm": arm, "applicable": False, "reason": why} for arm, why in arm_reasons.items()]
    found["table"] = sorted(table, key=lambda r: ARMS.index(r["arm"]))
    return found


# -- files ------------------------------------------------------------------------------------------------------
def run_audit(model, out: str | Path, *, benchmark: str = "", data_root: str | Path = "", samples: str | Path = "",
              image_root: str | Path = "", interventions: list[str] | None = None, seed: int = 0,
              batch_size: int = 8, max_samples: int = 0, label_fixes: bool = False,
              max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS, diagnostics: list[str] | None = None) -> dict:
    """Audit `model` on a benchmark (`benchmark` + `data_root`) or a sample file (`samples` + `image_root`);
    writes OUT/audit.json and OUT/audit.md and returns the results with their settings. `label_fixes`: the
    benchmark's documented label errors corrected (a setting, and what was applied recorded in the result). An item
    or sample with a text holding a special token of the model's tokenizer or over `max_text_tokens` tokens (0 = no
    limit) is a recorded skip, as in `lavit eval` (a setting). `diagnostics`: the 2026 diagnostics to add (None: all,
    an empty list: none; a setting)."""
    if label_fixes and not benchmark:
        raise ValueError("label fixes apply to a benchmark, not a sample file")
    if bool(benchmark) == bool(samples):
        raise ValueError("give exactly one of a benchmark (with its data root) or a sample file (with its image root)")
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0 (0 = all), got {max_samples}")
    if max_text_tokens < 0:
        raise ValueError(f"max_text_tokens must be >= 0 (0 = no limit), got {max_text_tokens}")
    out = Path(out)
    if benchmark:
        if not str(data_root):
            raise ValueError("a benchmark needs its data root")
        source = {"benchmark": benchmark, "data_root": str(Path(data_root).resolve())}
        inputs = {"data_root": data_root}
    else:
        if not str(image_root):
            raise ValueError("a sample file needs its image root")
        source = {"samples": str(Path(samples).resolve()), "image_root": str(Path(image_root).resolve())}
        inputs = {"samples": samples, "image_root": image_root}
    tokens = model.max_new_tokens or (model.protocol.rules(benchmark).max_new_tokens if benchmark
                                      else model.protocol.default_max_new_tokens)
    text_limits = text_limits_for(model, max_text_tokens)
    settings = {**source, **model.describe(), "interventions": choose_interventions(interventions),
                "diagnostics": choose_diagnostics(diagnostics), "seed": seed,
                "max_samples": max_samples, "max_new_tokens": tokens, **text_limits.describe()}
    if Path(settings["model"]).exists():  # a local checkpoint is one model however its path is spelled
        settings["model"] = str(Path(settings["model"]).resolve())
    # a local checkpoint folder is an input too; the images under a data or image root are only at stake when the
    # output folder already holds files
    refuse_inputs_inside(out, {**inputs, "model": getattr(model, "name", "")}, key="output folder",
                         folders=("data_root", "image_root"))
    if benchmark:  # label fixes: a setting, and what was applied a part of the result (as in `lavit eval`)
        _, loaded, fix_settings, fixes = load_benchmark(benchmark, data_root, max_samples, label_fixes,
                                                        model.protocol)
        items = as_audit_items(loaded, model.protocol.rules(benchmark), text_limits)
        settings.update(fix_settings)
    else:
        items, fixes = sample_items(samples, image_root, max_samples, text_limits), {}
    with RunLock(out):
        record_settings(out / "run.json", settings, hint="use another --out")
        result = audit_items(model, items, interventions=interventions, seed=seed, batch_size=batch_size,
                             desc=benchmark or Path(samples).name, max_new_tokens=tokens,
                             diagnostics=settings["diagnostics"])
        result = {"settings": settings, **fixes, **result}
        write_json_atomic(result, out / AUDIT_JSON)
        tmp = out / (AUDIT_MD + ".tmp")
        tmp.write_text(audit_markdown(result), encoding="utf-8")
        os.replace(tmp, out / AUDIT_MD)
    return result


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _interval(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return ""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return " [" + ", ".join(fmt.format(100 * x) for x in ci) + "]"


def _follows_cell(follows: dict) -> str:
    """A `_follows` result as a table cell."""
    return f"{_pct(follows['rate'])}% of {follows['n']}" if follows["n"] else "n/a (0 contrasting)"


def audit_markdown(result: dict) -> str:
    """The audit table (percent and points) and the collapse numbers; titled by the settings `run_audit` adds."""
    s, k = result.get("settings"), result["k"]
    title = f": {s['model']} on {s.get('benchmark') or s.get('samples')}" if s else ""
    lines = [f"# Latent-usage audit{title}", "",
             f"K = {k} latent tokens ({', '.join(result['latent_tokens'])}); "
             + (f"audited block: latents 1..{k - 1}, readout: latent {k}. " if k >= 2 else
                "no audited block: the only latent is the readout. ")
             + f"{result['n_asked']} items asked, {len(result['skipped'])} skipped; seed "
             f"{result['seed']}. Accuracy in %, Δ in points, 95% intervals (Wilson; paired: Newcombe).", "",
             "| intervention | accuracy [CI] | Δ vs forced [CI] | McNemar p | flip rate | follows donor |",
             "|---|---|---|---|---|---|"]
    for row in result["table"]:
        name = row["intervention"]
        if not row["applicable"]:
            lines.append(f"| {name} | not applicable: {row['reason']} | | | | |")
            continue
        acc = f"{_pct(row['accuracy'])}{_interval(row['ci95'])} (n={row['n']}"
        acc += f", {row['no_donor']} without donor)" if "no_donor" in row else ")"
        if name == "forced":
            lines.append(f"| {name} (reference) | {acc} | — | — | — | — |")
            continue
        diff = row["vs_forced"]
        follows = _follows_cell(row["follows_donor"]) if "follows_donor" in row else "—"
        lines.append(f"| {name} | {acc} | {100 * diff['difference']:+.1f}{_interval(diff['ci95'], True)} | "
                     f"{diff['mcnemar_p']:.3g} | {_pct(row['flip_rate'])}% | {follows} |")
    c = result["collapse"]
    lines += ["", f"Collapse across items at the last decoder layer (layer {c['layer']}, {c['items']} items):", "",
              "| states | vectors | mean pairwise cosine | effective rank |", "|---|---|---|---|"]
    block = f"latents 1..{k - 1} (pooled)" if k >= 2 else "latent block (none: K = 1)"
    named = [(block, c["latents"]), (f"readout (latent {k})", c["readout"]), ("last prompt token",
                                                                           c["last_prompt_token"])]
    for label, stats in named:
        if stats is None:
            lines.append(f"| {label} | — | no latent block (K = {k}) | |")
            continue
        cos, rank = stats["mean_pairwise_cosine"], stats["effective_rank"]
        lines.append(f"| {label} | {stats['vectors']} | {'n/a' if cos is None else f'{cos:.3f}'} | "
                     f"{'n/a' if rank is None else f'{rank:.2f}'} |")
    return "\n".join(lines + _diagnostics_markdown(result.get("diagnostics") or {"chosen": []}, k)) + "\n"


def _diagnostics_markdown(found: dict, k: int) -> list[str]:
    """The diagnostics' section of audit.md (nothing when none ran)."""
    if not found["chosen"]:
        return []
    lines = ["", "## Diagnostics (2026)", ""]
    if found["table"]:
        lines += ["| arm | accuracy [CI] | Δ vs forced [CI] | McNemar p | flip rate | follows oracle | Δ vs none [CI] |",
                  "|---|---|---|---|---|---|---|"]
        for row in found["table"]:
            if not row["applicable"]:
                lines.append(f"| {row['arm']} | not applicable: {row['reason']} | | | | | |")
                continue
            diff = row["vs_forced"]
            follows = _follows_cell(row["follows_oracle"]) if "follows_oracle" in row else "—"
            vs_none = "—"
            if "vs_none" in row:
                vs_none = f"{100 * row['vs_none']['difference']:+.1f}{_interval(row['vs_none']['ci95'], True)}"
            lines.append(f"| {row['arm']} | {_pct(row['accuracy'])}{_interval(row['ci95'])} (n={row['n']}, "
                         f"{row['no_source']} without a source) | {100 * diff['difference']:+.1f}"
                         f"{_interval(diff['ci95'], True)} | {diff['mcnemar_p']:.3g} | {_pct(row['flip_rate'])}% | "
                         f"{follows} | {vs_none} |")
        lines.append("")
    if "oracle_view" in found:
        view = found["oracle_view"]
        lines += [f"Oracle view (forced, the asked region alone on a fill of {tuple(view['fill'])}): accuracy "
                  f"{_pct(view['accuracy'])}{_interval(view['ci95'])} (n={view['n']}), Δ vs forced "
                  f"{100 * view['vs_forced']['difference']:+.1f}{_interval(view['vs_forced']['ci95'], True)}.", ""]
    if "emission" in found:
        lines += ["| prompt style (natural mode) | all K latents first | any latent | latents per answer | "
                  "natural-mode accuracy |", "|---|---|---|---|---|"]
        for style, e in found["emission"].items():
            label = style + (f" (renders as {e['same_as']})" if e["same_as"] else "")
            lines.append(f"| {label} | {_pct(e['all_latents_first'])}% | {_pct(e['any_latent'])}% | "
                         f"{e['mean_latents']:.2f} | {_pct(e['natural_accuracy']['accuracy'])}"
                         f"{_interval(e['natural_accuracy']['ci95'])} |")
        lines.append("")
    if "norm_ratio" in found:
        n = found["norm_ratio"]
        lines += [f"Norm ratio over the mean norm of the prompt's text-token embeddings ({n['text_embedding_norm']:.3g}"
                  f", {n['items']} items):", "",
                  "| latent states | " + " | ".join(f"latent {i + 1}" for i in range(k)) + " | mean |",
                  "|---|" + "---|" * (k + 1)]
        for part, label in (("input", "decoder input"), ("final", "final hidden state")):
            lines.append(f"| {label} | " + " | ".join(f"{x:.3g}" for x in n[part]["per_latent"])
                         + f" | {n[part]['mean']:.3g} |")
        lines += ["", "Per decoder layer's output (latents pooled): "
                  + ", ".join(f"{x:.3g}" for x in n["layer_output"]["per_layer"]) + ".", ""]
    if "sensitivity" in found:
        v = found["sensitivity"]
        if not v["applicable"]:
            lines.append(f"Input sensitivity: not applicable: {v['reason']}.")
        else:
            last = {name: "—" if v[name] is None else f"{v[name]['last_layer']:.3g}"
                    for name in ("latents", "readout", "last_prompt_token")}
            lines.append(f"Input sensitivity (‖Δh‖/‖h‖ at the last layer, {v['pairs']} items and their swap donors): "
                         f"latents 1..{k - 1} {last['latents']}, readout {last['readout']}, last prompt token "
                         f"{last['last_prompt_token']}.")
    return lines

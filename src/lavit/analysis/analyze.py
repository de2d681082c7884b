"""`lavit analyze`: the Perception-Gap analysis (paper §3 and §5.3) of a teacher and its students.

    lavit analyze --samples test.jsonl --image-root images --model teacher=DIR --model lavit=DIR \
        --model naive_sft=DIR --model base=DIR --out runs/analysis [--correct results.json] \
        [--pixels teacher=200704:1003520] [--teacher-store runs/signals] [--device-map auto] [--batch-size 16]

For each model, fed identical text (question + reference answer), every text token after the image is
paired with the query that produces it (the position before it, as in generation; a LaViT student's
first answer token is produced at its last latent token). The answer tokens' map over the image (the
mean of their producing queries' maps, end-of-turn excluded) → S_focus against the sample's box
(eq. 1), entropy (eq. 10), salient-region count (> 1.5 × mean, Table 2); against the teacher, per
category of the produced token (functional / object / attribute), KL(teacher ‖ model) of the maps and
the cosine distance of the producing query's hidden-state similarity row (Fig. 3; rows, not raw
states, because teacher and student widths differ). With per-sample
correctness (`--correct`), accuracy over S_focus thresholds (Fig. 2). Figures are PNG, numbers JSON.

Resolution: every number depends on the grid a map lies on, so each model runs at stated pixel limits
(`lavit.analysis.pixel_limits`: `--pixels NAME=MIN:MAX`, else the teacher store's manifest for the teacher,
else the student's `lavit.json`, else a built-in tiny model's processor); a model whose limits nobody states
is an error, never its processor's default. S_focus, entropy and salient regions are each model's on its own
grid (`image_tokens`: how many cells it had). KL compares maps on one common grid per sample: per axis the
fewest cells among all the models' grids, every model's map resampled onto it by the area-weighted
resampling the training targets use (`resample_map`) — so a map is only ever summed over exact cell
overlaps, never interpolated, and every student's KL is measured on the same grid. `analysis.json` records
the limits in force and where each came from, every model's grid per sample and the common grid (`grids`).
`--device-map auto` splits each model over the GPUs; `--batch-size` samples go through a model at once.

Samples are checked before any model runs, as extraction checks them: one the analysis cannot use (no box, a box
that looks normalised, an image outside `--image-root`, missing, undecodable or too large, a question or answer
holding a special token of a model's tokenizer or over `--max-text-tokens`, …) is left out and listed in
`analysis.json` under `rejected` (id, reason code, detail) and `rejected_by_reason`; malformed lines and
duplicate ids, unknown pixel limits, or no usable sample at all, stop before any work. An `--out` holding an
analysis of other settings (`run.json`: models, pixel limits and their sources, device map, batch size, the
samples file's content fingerprint, …) or one of the inputs is refused, and one analysis holds its folder at a
time.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from lavit.analysis import figures
from lavit.analysis.collect import (
    CATEGORIES,
    ModelTraces,
    SampleRecord,
    model_text_limits,
    read_records,
    token_category,
    trace_model,
)
from lavit.analysis.metrics import (
    accuracy_by_threshold,
    attention_entropy,
    cosine_distance,
    kl_divergence,
    normalise,
    salient_region_count,
    similarity_rows,
    summary_stats,
)
from lavit.analysis.pixel_limits import resolve_pixel_limits
from lavit.data.fingerprints import file_fingerprint
from lavit.data.run_dir import RunLock, record_settings, refuse_inputs_inside
from lavit.data.samples import DEFAULT_MAX_TEXT_TOKENS
from lavit.data.signal_store import write_json_atomic
from lavit.data.targets import resample_map
from lavit.teacher.signals import s_focus

THRESHOLDS = [round(0.05 * i, 2) for i in range(19)]
COMPARISON = ("S_focus, entropy and salient regions: each model's map on its own grid, at its stated pixel "
              "limits; KL(teacher ‖ model): maps compared on the coarser grid by area-weighted resampling — per "
              "sample, each axis has the fewest cells among all the models' grids ('common'), and every model's map "
              "is resampled onto it by lavit.data.targets.resample_map (each coarse cell sums the exact overlapping "
              "fraction of every finer cell), so no map is interpolated and every model's KL is measured on the same "
              "grid")


def analyze(samples: str | Path, image_root: str | Path, models: dict[str, str], out: str | Path, *,
            teacher: str = "teacher", correct: dict[str, dict[str, bool]] | None = None, max_samples: int = 100,
            heatmaps: int = 4, batch_size: int = 16, pixels: dict[str, dict[str, int]] | None = None,
            teacher_store: str | Path | None = None, device_map: str = "",
            max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS) -> dict:
    """The analysis of `models` ({name: path}) into `out`. `pixels` ({name: {min_pixels, max_pixels}}) and
    `teacher_store` state the models' resolutions (see `resolve_pixel_limits`); `device_map` goes to
    `from_pretrained`; a sample whose question or answer holds a special token of a model's tokenizer or is longer
    than `max_text_tokens` tokens (0 = no limit) is rejected before any model loads."""
    if teacher not in models:
        raise ValueError(f"the models must include the teacher under the name {teacher!r} (got {sorted(models)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_text_tokens < 0:
        raise ValueError(f"max_text_tokens must be >= 0 (0 = no limit), got {max_text_tokens}")
    image_root = Path(image_root)
    text_limits = functools.cache(lambda: model_text_limits(models, max_text_tokens))  # loaded once, if needed
    records, rejected = read_records(samples, image_root, max_samples, text_limits)
    if not records:
        raise ValueError(f"{samples}: no sample the analysis can use; {len(rejected)} rejected, e.g. "
                         + "; ".join(f"{r['id']}: {r['reason']}: {r['detail']}" for r in rejected[:3]))
    limits = resolve_pixel_limits(models, teacher, pixels, teacher_store)  # before any model loads
    out = Path(out)
    store_input = {"teacher_store": teacher_store} if teacher_store else {}
    refuse_inputs_inside(out, {"samples": samples, "image_root": image_root, **models, **store_input},
                         folders=("image_root",))
    # what the results depend on; a local model is one model however its path is spelled
    flags = hashlib.sha256(json.dumps(correct, sort_keys=True).encode()).hexdigest() if correct else None
    settings = {"samples": str(Path(samples).resolve()), "image_root": str(image_root.resolve()),
                "models": {n: str(Path(m).resolve()) if Path(m).exists() else str(m) for n, m in models.items()},
                "teacher": teacher, "max_samples": max_samples, "heatmaps": heatmaps, "correct_sha256": flags,
                "pixel_limits": limits, "teacher_store": str(Path(teacher_store).resolve()) if teacher_store else None,
                "device_map": device_map, "batch_size": batch_size, **text_limits().describe(),
                # the file's content, not its name: an edited samples file is another analysis (images not hashed)
                "samples_fingerprint": file_fingerprint(samples)}
    with RunLock(out):  # one analysis per folder at a time: two would interleave their figures
        record_settings(out / "run.json", settings, hint="use another --out")
        return _analyze(records, rejected, image_root, models, out, settings, correct)


def _analyze(records: list[SampleRecord], rejected: list[dict], image_root: Path, models: dict[str, str], out: Path,
             settings: dict, correct: dict[str, dict[str, bool]] | None) -> dict:
    teacher = settings["teacher"]
    traced = {name: trace_model(path, records, image_root, pixel_limits=_min_max(settings["pixel_limits"][name]),
                                device_map=settings["device_map"], batch_size=settings["batch_size"], desc=name)
              for name, path in models.items()}
    common = common_grids(traced, records)  # [t, h, w] per sample

    per_model: dict[str, dict] = {}
    answer_maps: dict[str, list[np.ndarray]] = {}
    for name, model in traced.items():
        answer_maps[name] = [normalise(t.token_maps[t.is_answer].mean(0)) for t in model.traces]
        flags = correct.get(name) if correct else None
        per_model[name] = _model_entry(model, answer_maps[name], records, flags)
        per_model[name]["pixel_limits"] = {**model.pixel_limits, "source": settings["pixel_limits"][name]["source"]}

    common_maps = {name: [_on_grid(t.token_maps, t.grid, grid) for t, grid in zip(model.traces, common)]
                   for name, model in traced.items()}  # per sample [Q, N_common]
    gap = {name: _perception_gap(traced[teacher], traced[name], common_maps[teacher], common_maps[name])
           for name in traced if name != teacher}

    grids = {"comparison": COMPARISON, "common": {r.id: list(g) for r, g in zip(records, common)},
             "per_model": {name: {r.id: list(t.grid) for r, t in zip(records, model.traces)}
                           for name, model in traced.items()}}
    result = {"samples": len(records), "rejected": rejected,
              "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
              "models": {k: str(v) for k, v in models.items()}, "teacher": teacher, "settings": settings,
              "grids": grids, "per_model": per_model, "perception_gap": gap}
    sizes = [r.size for r in records]
    result["figures"] = figures.write_all(out, per_model, gap, answer_maps, records, sizes, image_root,
                                          {n: [t.grid for t in traced[n].traces] for n in traced},
                                          settings["heatmaps"])
    write_json_atomic(result, out / "analysis.json")
    return result


def _min_max(limits: dict) -> dict[str, int]:
    return {"min_pixels": limits["min_pixels"], "max_pixels": limits["max_pixels"]}


def common_grids(traced: dict[str, ModelTraces], records: list[SampleRecord]) -> list[tuple[int, int, int]]:
    """Per sample, the grid every model's map is compared on: per axis the fewest cells among the models'
    grids, so resampling onto it only ever sums exact cell overlaps (area-weighted), never interpolates."""
    common = []
    for record, traces in zip(records, zip(*(model.traces for model in traced.values()))):
        t, h, w = zip(*(tr.grid for tr in traces))
        if len(set(t)) > 1:
            raise ValueError(f"sample {record.id}: temporal grids differ between models: {sorted(set(t))}")
        common.append((t[0], min(h), min(w)))
    return common


def _on_grid(token_maps: np.ndarray, grid, common) -> np.ndarray:
    """[Q, N] maps on `grid` → [Q, N_common] on `common`, by area-weighted resampling (`common` is nowhere finer)."""
    if tuple(grid) == tuple(common):
        return token_maps
    return torch.stack([resample_map(torch.as_tensor(m), grid, common) for m in token_maps]).numpy()


def _model_entry(model: ModelTraces, maps: list[np.ndarray], records: list[SampleRecord],
                 correct: dict[str, bool] | None) -> dict:
    """One model's statistics, each on its own grid, with how many image tokens (grid cells) it had."""
    focus = [s_focus(m, t.grid, r.bbox, r.size) for m, t, r in zip(maps, model.traces, records)]
    entropy = [attention_entropy(m) for m in maps]
    salient = [salient_region_count(m) for m in maps]
    entry = {"s_focus": summary_stats(focus), "attention_entropy": summary_stats(entropy),
             "salient_regions": summary_stats(salient), "image_tokens": summary_stats([m.size for m in maps]),
             "per_sample": {r.id: {"s_focus": f, "entropy": e, "salient": s}
                            for r, f, e, s in zip(records, focus, entropy, salient)}}
    if correct is not None:
        flags = [correct[r.id] for r in records]
        entry["accuracy_by_s_focus"] = accuracy_by_threshold(focus, flags, THRESHOLDS)
        right = [f for f, c in zip(focus, flags) if c]
        wrong = [f for f, c in zip(focus, flags) if not c]
        entry["mean_s_focus_correct"] = float(np.mean(right)) if right else None
        entry["mean_s_focus_incorrect"] = float(np.mean(wrong)) if wrong else None
    return entry


def _perception_gap(teacher: ModelTraces, model: ModelTraces, teacher_maps: list[np.ndarray],
                    model_maps: list[np.ndarray]) -> dict:
    """KL(teacher ‖ model) of the producing queries' maps on the common grids and the cosine distance of their
    similarity rows, by category of the produced token."""
    kl, cos = defaultdict(list), defaultdict(list)
    misaligned = 0
    for t_tr, s_tr, toks, s_toks, t_maps, s_maps in zip(teacher.traces, model.traces, teacher.tokens, model.tokens,
                                                        teacher_maps, model_maps):
        if toks != s_toks:
            misaligned += 1  # different tokenizers or prompts: no token-by-token comparison
            continue
        t_sim, s_sim = similarity_rows(t_tr.hidden), similarity_rows(s_tr.hidden)
        for q, token in enumerate(toks):
            cat = token_category(token)
            kl[cat].append(kl_divergence(t_maps[q], s_maps[q]))
            cos[cat].append(cosine_distance(t_sim[q], s_sim[q]))
    return {"kl_by_category": {c: float(np.mean(kl[c])) if kl[c] else None for c in CATEGORIES},
            "cosine_distance_by_category": {c: float(np.mean(cos[c])) if cos[c] else None for c in CATEGORIES},
            "tokens_by_category": {c: len(kl[c]) for c in CATEGORIES}, "misaligned_samples": misaligned}

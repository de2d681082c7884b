"""`lavit analyze`: the Perception-Gap analysis (paper §3 and §5.3) of a teacher and its students.

    lavit analyze --samples test.jsonl --image-root images --model teacher=DIR --model lavit=DIR \
        --model naive_sft=DIR --model base=DIR --out runs/analysis [--correct results.json]

For each model, fed identical text (question + reference answer), every text token after the image is
paired with the query that produces it (the position before it, as in generation; a LaViT student's
first answer token is produced at its last latent token). The answer tokens' map over the image (the
mean of their producing queries' maps, end-of-turn excluded) → S_focus against the sample's box
(eq. 1), entropy (eq. 10), salient-region count (> 1.5 × mean, Table 2); against the teacher, per
category of the produced token (functional / object / attribute), KL(teacher ‖ model) of the maps and
the cosine distance of the producing query's hidden-state similarity row (Fig. 3; rows, not raw
states, because teacher and student widths differ). With per-sample
correctness (`--correct`), accuracy over S_focus thresholds (Fig. 2). Figures are PNG, numbers JSON.

Samples are checked before any model runs, as extraction checks them: one the analysis cannot use (no box,
an image outside `--image-root`, missing, undecodable or too large, …) is left out and listed in
`analysis.json` under `rejected` (id, reason code, detail) and `rejected_by_reason`; malformed lines and
duplicate ids, or no usable sample at all, stop before any work. An `--out` holding an analysis of other
settings (`run.json`) or one of the inputs is refused, and one analysis holds its folder at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from lavit.analysis import figures
from lavit.analysis.collect import CATEGORIES, read_records, token_category, trace_model
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
from lavit.data.run_dir import RunLock, record_settings, refuse_inputs_inside
from lavit.data.signal_store import write_json_atomic
from lavit.data.targets import resample_map
from lavit.teacher.signals import s_focus

THRESHOLDS = [round(0.05 * i, 2) for i in range(19)]


def _on_grid(token_map: np.ndarray, src, dst) -> np.ndarray:
    if tuple(src) == tuple(dst):
        return token_map
    return resample_map(torch.as_tensor(token_map), src, dst).clamp_min(0).numpy()


def analyze(samples: str | Path, image_root: str | Path, models: dict[str, str], out: str | Path, *,
            teacher: str = "teacher", correct: dict[str, dict[str, bool]] | None = None, max_samples: int = 100,
            heatmaps: int = 4, batch_size: int = 16) -> dict:
    if teacher not in models:
        raise ValueError(f"the models must include the teacher under the name {teacher!r} (got {sorted(models)})")
    image_root = Path(image_root)
    records, rejected = read_records(samples, image_root, max_samples)
    if not records:
        raise ValueError(f"{samples}: no sample the analysis can use; {len(rejected)} rejected, e.g. "
                         + "; ".join(f"{r['id']}: {r['reason']}: {r['detail']}" for r in rejected[:3]))
    out = Path(out)
    refuse_inputs_inside(out, {"samples": samples, "image_root": image_root, **models})
    # what the results depend on; a local model is one model however its path is spelled
    flags = hashlib.sha256(json.dumps(correct, sort_keys=True).encode()).hexdigest() if correct else None
    settings = {"samples": str(Path(samples).resolve()), "image_root": str(image_root.resolve()),
                "models": {n: str(Path(m).resolve()) if Path(m).exists() else str(m) for n, m in models.items()},
                "teacher": teacher, "max_samples": max_samples, "heatmaps": heatmaps, "correct_sha256": flags}
    with RunLock(out):  # one analysis per folder at a time: two would interleave their figures
        record_settings(out / "run.json", settings, hint="use another --out")
        return _analyze(records, rejected, image_root, models, out, teacher, correct, heatmaps, batch_size)


def _analyze(records: list, rejected: list[dict], image_root: Path, models: dict[str, str], out: Path, teacher: str,
             correct: dict[str, dict[str, bool]] | None, heatmaps: int, batch_size: int) -> dict:
    sizes = [r.size for r in records]
    traces = {name: trace_model(path, records, image_root, batch_size=batch_size, desc=name)
              for name, path in models.items()}

    per_model: dict[str, dict] = {}
    answer_maps: dict[str, list[np.ndarray]] = {}
    for name, (model_traces, _) in traces.items():
        maps = [normalise(t.token_maps[t.is_answer].mean(0)) for t in model_traces]
        answer_maps[name] = maps
        focus = [s_focus(m, t.grid, r.bbox, size) for m, t, r, size in zip(maps, model_traces, records, sizes)]
        entropy = [attention_entropy(m) for m in maps]
        salient = [salient_region_count(m) for m in maps]
        entry = {"s_focus": summary_stats(focus), "attention_entropy": summary_stats(entropy),
                 "salient_regions": summary_stats(salient),
                 "per_sample": {r.id: {"s_focus": f, "entropy": e, "salient": s}
                                for r, f, e, s in zip(records, focus, entropy, salient)}}
        if correct and name in correct:
            flags = [correct[name][r.id] for r in records]
            entry["accuracy_by_s_focus"] = accuracy_by_threshold(focus, flags, THRESHOLDS)
            right = [f for f, c in zip(focus, flags) if c]
            wrong = [f for f, c in zip(focus, flags) if not c]
            entry["mean_s_focus_correct"] = float(np.mean(right)) if right else None
            entry["mean_s_focus_incorrect"] = float(np.mean(wrong)) if wrong else None
        per_model[name] = entry

    gap: dict[str, dict] = {}
    teacher_traces, teacher_tokens = traces[teacher]
    for name, (model_traces, model_tokens) in traces.items():
        if name == teacher:
            continue
        kl, cos = defaultdict(list), defaultdict(list)
        misaligned = 0
        for t_tr, s_tr, toks, s_toks in zip(teacher_traces, model_traces, teacher_tokens, model_tokens):
            if toks != s_toks:
                misaligned += 1  # different tokenizers or prompts: no token-by-token comparison
                continue
            t_sim, s_sim = similarity_rows(t_tr.hidden), similarity_rows(s_tr.hidden)
            for q, token in enumerate(toks):
                cat = token_category(token)
                t_map = _on_grid(t_tr.token_maps[q], t_tr.grid, s_tr.grid)
                kl[cat].append(kl_divergence(t_map, s_tr.token_maps[q]))
                cos[cat].append(cosine_distance(t_sim[q], s_sim[q]))
        gap[name] = {"kl_by_category": {c: float(np.mean(kl[c])) if kl[c] else None for c in CATEGORIES},
                     "cosine_distance_by_category": {c: float(np.mean(cos[c])) if cos[c] else None
                                                     for c in CATEGORIES},
                     "tokens_by_category": {c: len(kl[c]) for c in CATEGORIES}, "misaligned_samples": misaligned}

    result = {"samples": len(records), "rejected": rejected,
              "rejected_by_reason": dict(Counter(r["reason"] for r in rejected)),
              "models": {k: str(v) for k, v in models.items()}, "teacher": teacher,
              "per_model": per_model, "perception_gap": gap}
    result["figures"] = figures.write_all(out, per_model, gap, answer_maps, records, sizes, image_root,
                                          {n: [t.grid for t in traces[n][0]] for n in traces}, heatmaps)
    write_json_atomic(result, out / "analysis.json")
    return result

"""`lavit filter`: the three-stage filter of paper §4.1, turning teacher signals into the LaViT-SFT set.

    lavit filter signals=runs/signals out=runs/lavit_sft

Stages, in order: (1) correctness — the teacher's answer matches the ground truth; (2) difficulty —
a text-only model asked the question without the image must get it wrong; (3) alignment —
S_focus >= 0.2. Both answer stages decide a pair by the matcher's rules where they are certain and,
with matcher=judge, by a judge model (`lavit.eval.judge`) for the rest; a pair left undecided (no
judge, or an unparsable judge output) is dropped with its reason, never passed. Samples the extractor
rejected, and rows whose stored signal is not finite, are dropped before the stages. Every drop is
written to dropped.jsonl with its stage, reason and verdict; filter_report.json counts them and how
each stage's pairs were decided. The kept rows are the training set (`lavit train data=OUT`). The input is a
raw store (`lavit extract`, `lavit import-official`): a filtered set is refused before anything is written. The
input store's content fingerprint (`signals_fingerprint`) goes into the manifest and the report, so the set names
what it was filtered from.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from lavit.data.fingerprints import store_fingerprint
from lavit.data.run_dir import prepare_output_folder
from lavit.data.samples import open_rgb
from lavit.data.signal_store import (
    SCHEMA_VERSION,
    SHARD_DIR,
    SIGNAL_SCHEMA,
    check_finite_row,
    read_manifest,
    read_store,
    recorded_image_root,
    write_json_atomic,
    write_manifest,
    write_table_atomic,
)
from lavit.eval.judge import (
    JUDGE_PROMPT_VERSION,
    CachedJudge,
    Decision,
    JudgeQuery,
    decide,
    engine_judge,
    is_endpoint,
    openai_judge,
)
from lavit.eval.matching import get_verdict_matcher
from lavit.inference.engines import build_engine, import_vllm
from lavit.models.checkpoint import tiny_name
from lavit.teacher.filter_config import FilterConfig

FILTER_REPORT = "filter_report.json"
SFT_SCHEMA = pa.schema([*SIGNAL_SCHEMA, ("teacher_correct", pa.bool_()), ("text_only_answer", pa.string()),
                        ("text_only_correct", pa.bool_())])


def _counts(decisions: list[Decision]) -> dict:
    """How one stage's pairs were decided: by the rules (per rule), by the judge (per verdict), or not at all."""
    rules = Counter(d.rule for d in decisions if d.by == "rules" and d.match is not None)
    judged = [d for d in decisions if d.by == "judge"]
    return {"pairs": len(decisions), "rules": sum(rules.values()), "judge": len(judged),
            "undecided": sum(d.by == "rules" and d.match is None for d in decisions),
            "rules_by_rule": dict(sorted(rules.items())),
            "judge_verdicts": {"yes": sum(d.match is True for d in judged), "no": sum(d.match is False for d in judged),
                               "unparsable": sum(d.match is None for d in judged)},
            "judge_cached": sum(d.cached for d in judged)}


def _how(d: Decision) -> str:
    return f"judge {JUDGE_PROMPT_VERSION}: {d.judge_output!r}" if d.by == "judge" else f"rules: {d.rule}"


def _undecided(d: Decision) -> tuple[str, str]:
    """(reason code, detail) of a pair neither the rules nor the judge decided."""
    if d.by == "judge":
        return "judge_unparsable", f"judge {JUDGE_PROMPT_VERSION} output {d.judge_output!r} is not yes/no"
    return "rules_uncertain", f"the rules cannot decide ({d.rule}); matcher=judge asks a judge model"


def apply_filter(rows: list[dict], cfg: FilterConfig, text_only_answers,
                 judge=None) -> tuple[list[dict], list[dict], dict]:
    """Split rows into kept rows and drop records {id, stage, reason, ...}, with per-stage verdict counts.

    `text_only_answers(questions) -> answers` is the difficulty stage's model (called in batches);
    `judge(list[JudgeQuery]) -> list[JudgeVerdict]` (a `CachedJudge`) decides what the rules defer when
    matcher=judge.
    """
    if cfg.matcher == "judge" and judge is None:
        raise ValueError("matcher=judge needs a judge")
    rules = get_verdict_matcher("default" if cfg.matcher == "judge" else cfg.matcher)
    dropped: list[dict] = []
    verdicts: dict[str, dict] = {}

    def drop(row: dict, stage: str, reason: str, detail: str, decision: Decision | None = None) -> None:
        # `reason` is a fixed code (summable); `detail` carries the values that made the decision.
        dropped.append({"id": row["id"], "stage": stage, "reason": reason, "detail": detail, "answer": row.get("answer"),
                        "teacher_answer": row.get("teacher_answer"), "text_only_answer": row.get("text_only_answer"),
                        "s_focus": row.get("s_focus"),
                        "decided_by": None if decision is None else decision.by,
                        "rule": None if decision is None else decision.rule,
                        "judge_output": None if decision is None else decision.judge_output})

    if "correctness" in cfg.stages and any(r["status"] == "ok" and r["teacher_answer"] is None for r in rows):
        raise ValueError("the store has rows without a teacher answer (an imported official set is already filtered "
                         "by its authors): run the filter with stages=[alignment] or train on the store directly")
    alive = []
    for row in rows:
        row = {**row, "teacher_correct": None, "text_only_answer": None, "text_only_correct": None}
        if row["status"] != "ok":
            reject = row["reject_reason"] or "rejected"
            drop(row, "extract", reject.split(":")[0].strip(), reject)
            continue
        try:
            check_finite_row(row)
        except ValueError as err:
            drop(row, "invalid_signal", "nonfinite_signal", str(err))
            continue
        alive.append(row)

    def judged(stage: str, answer_key: str, correct_key: str) -> list:
        """Each live row's answer in `answer_key` against its truth (rules, then the judge), recorded in
        `correct_key` and counted under `stage`."""
        decisions = decide([JudgeQuery(r["question"], r["answer"], r[answer_key]) for r in alive], rules, judge)
        verdicts[stage] = _counts(decisions)
        for row, d in zip(alive, decisions, strict=True):
            row[correct_key] = d.match
        return decisions

    for stage in cfg.stages:
        survivors = []
        if stage == "correctness":
            for row, d in zip(alive, judged(stage, "teacher_answer", "teacher_correct"), strict=True):
                if d.match:
                    survivors.append(row)
                elif d.match is False:
                    drop(row, stage, "teacher_wrong", f"teacher answered {row['teacher_answer']!r}, ground truth "
                         f"{row['answer']!r} ({_how(d)})", d)
                else:
                    drop(row, stage, *_undecided(d), d)
        elif stage == "difficulty":
            answers = text_only_answers([r["question"] for r in alive]) if alive else []
            for row, answer in zip(alive, answers, strict=True):
                row["text_only_answer"] = answer
            for row, d in zip(alive, judged(stage, "text_only_answer", "text_only_correct"), strict=True):
                if d.match:
                    drop(row, stage, "text_only_correct", f"answered {row['text_only_answer']!r} without the image "
                         f"({_how(d)})", d)
                elif d.match is False:
                    survivors.append(row)
                else:  # not shown wrong: the sample may be answerable without the image
                    drop(row, stage, *_undecided(d), d)
        else:  # alignment
            for row in alive:
                if row["s_focus"] is None:
                    if cfg.require_box:
                        drop(row, stage, "no_box", "no bounding box, S_focus undefined")
                    else:
                        survivors.append(row)
                elif row["s_focus"] >= cfg.min_s_focus:
                    survivors.append(row)
                else:
                    drop(row, stage, "low_s_focus", f"S_focus {row['s_focus']:.3f} < {cfg.min_s_focus}")
        alive = survivors
    return alive, dropped, verdicts


def judge_cache_path(cfg: FilterConfig) -> Path:
    """Beside the output folder by default, so `overwrite=true` (which empties the folder) keeps the cache."""
    out = Path(cfg.out)
    return Path(cfg.judge_cache) if cfg.judge_cache else out.parent / f"{out.name}.judge_cache.jsonl"


def judge_identity(name: str, seed: int, endpoint_model: str = "") -> str:
    """The judge's name in cache keys: a local checkpoint by its absolute path, a tiny model with its seed, an
    endpoint by its URL and model name."""
    if endpoint_model:
        return f"{name.rstrip('/')}#{endpoint_model}"
    if tiny_name(name):
        return f"{name}@seed{seed}"
    return str(Path(name).resolve()) if Path(name).exists() else name


def load_engine(cfg: FilterConfig, name: str, max_images: int):
    """`name` on the configured engine (`max_images`: images per vLLM prompt, 0 for text only)."""
    return build_engine(cfg.engine, name, dtype=cfg.dtype, device_map=cfg.device_map, seed=cfg.seed,
                        max_images=max_images, tensor_parallel_size=cfg.tensor_parallel_size,
                        max_model_len=cfg.vllm_max_model_len, enforce_eager=cfg.vllm_enforce_eager)


def build_judge(cfg: FilterConfig, name: str, loaded: dict) -> CachedJudge:
    """A cached judge: an endpoint, or a model that loads on its first uncached query (a rerun whose pairs are all
    cached never loads it); an engine already in `loaded` (the text-only model) is reused, a new one is added."""
    if is_endpoint(name):
        raw = openai_judge(name, cfg.judge_model, max_new_tokens=cfg.judge_max_new_tokens, timeout=cfg.judge_timeout,
                           concurrency=cfg.batch_size)
        return CachedJudge(raw, judge_identity(name, cfg.seed, cfg.judge_model), judge_cache_path(cfg),
                           cfg.batch_size)
    state: dict = {}

    def raw_model(queries: list[JudgeQuery]) -> list[str]:
        if "judge" not in state:
            if name not in loaded:
                loaded[name] = load_engine(cfg, name, max_images=0)
            state["judge"] = engine_judge(loaded[name], max_new_tokens=cfg.judge_max_new_tokens)
        return state["judge"](queries)

    return CachedJudge(raw_model, judge_identity(name, cfg.seed), judge_cache_path(cfg), cfg.batch_size)


def check_signal_store(signals: Path, manifest: dict) -> None:
    """Refuse, before anything is written, a store the filter cannot take: a filtered set (its manifest holds no
    extract settings to record, and its source store is what to filter with other stages or thresholds), or a
    store of another kind."""
    if manifest.get("kind") == "lavit_sft" or (signals / FILTER_REPORT).is_file():
        try:
            source = json.loads((signals / FILTER_REPORT).read_text(encoding="utf-8"))["settings"]["signals"]
        except (OSError, ValueError, KeyError, TypeError):
            source = "the extract store it was filtered from"
        raise ValueError(f"{signals} is already a filtered set ({FILTER_REPORT}); filter its source store "
                         f"({source}) with the stages and thresholds you want, or train on this set")
    if manifest.get("kind") != "teacher_signals":
        raise ValueError(f"{signals} holds a {manifest.get('kind')!r} store, not teacher signals from lavit extract "
                         "or lavit import-official")


def run_filter(cfg: FilterConfig) -> dict:
    start = time.time()
    if not cfg.signals:
        raise ValueError("no teacher-signal store given (set signals=DIR)")
    source = read_manifest(Path(cfg.signals))
    check_signal_store(Path(cfg.signals), source)
    out = Path(cfg.out)
    if cfg.engine == "vllm":
        import_vllm()  # missing vllm fails before anything is deleted or loaded
    # before anything is deleted: an out that is, holds or lies inside an input is refused (overwrite=true would
    # delete it); the images the store was extracted from are an input too, though not named here
    prepare_output_folder(out, {"signals": cfg.signals, "image_root of the signals": recorded_image_root(source),
                                "text_only_image": cfg.text_only_image, "judge_cache": judge_cache_path(cfg),
                                "text_model": cfg.text_model,
                                **({} if is_endpoint(cfg.judge) else {"judge": cfg.judge})}, cfg.overwrite,
                          folders=("image_root of the signals",))
    fingerprint = store_fingerprint(cfg.signals)  # of the store as read next
    rows = read_store(cfg.signals).to_pylist()
    if not rows:
        raise ValueError(f"{cfg.signals} holds no rows")
    expected = source.get("num_input_samples")
    if expected is not None and len(rows) != expected:
        raise ValueError(f"{cfg.signals} holds {len(rows)} of {expected} samples: an extract worker has not "
                         "finished (rerun `lavit extract` to complete the store)")

    blank = None
    if cfg.text_only_image:
        if not Path(cfg.text_only_image).is_file():
            raise FileNotFoundError(f"text_only_image {cfg.text_only_image} does not exist")
        blank = open_rgb(cfg.text_only_image)
    loaded: dict = {}  # model name → engine, shared by the text-only model and the judge
    try:
        return _filter(cfg, source, fingerprint, rows, blank, loaded, start)
    finally:
        for engine in loaded.values():
            engine.close()


def _filter(cfg: FilterConfig, source: dict, signals_fingerprint: dict, rows: list[dict], blank, loaded: dict,
            start: float) -> dict:
    out = Path(cfg.out)
    text_model_name = None
    if "difficulty" in cfg.stages:
        text_model_name = source["teacher"] if cfg.text_model == "teacher" else cfg.text_model
        loaded[text_model_name] = load_engine(cfg, text_model_name, max_images=0 if blank is None else 1)
    judge_name = (source["teacher"] if cfg.judge == "teacher" else cfg.judge) if cfg.matcher == "judge" else None
    judge = build_judge(cfg, judge_name, loaded) if judge_name else None

    def text_only_answers(questions: list[str]) -> list[str]:
        engine = loaded[text_model_name]
        answers = []
        for i in tqdm(range(0, len(questions), cfg.batch_size), desc="text-only answers", unit="batch"):
            chunk = questions[i:i + cfg.batch_size]
            answers += engine.generate(None if blank is None else [blank] * len(chunk), chunk, latent_tokens=[],
                                       mode="none", system_prompt=cfg.system_prompt or None,
                                       max_new_tokens=cfg.max_new_tokens)
        return answers

    kept, dropped, verdicts = apply_filter(rows, cfg, text_only_answers, judge)
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARD_DIR).mkdir(parents=True)
    write_table_atomic(pa.Table.from_pylist(kept, schema=SFT_SCHEMA), out / SHARD_DIR / "lavit_sft-00000.parquet")
    with open(out / "dropped.jsonl", "w", encoding="utf-8") as f:
        for record in dropped:
            f.write(json.dumps(record) + "\n")
    by_stage = Counter(d["stage"] for d in dropped)
    by_reason: dict[str, dict[str, int]] = {}
    for d in dropped:
        by_reason.setdefault(d["stage"], Counter())[d["reason"]] += 1
    report = {
        "input_rows": len(rows),
        "kept": len(kept),
        "dropped_by_stage": {s: by_stage.get(s, 0) for s in ("extract", "invalid_signal", *cfg.stages)},
        "dropped_by_reason": {stage: dict(sorted(codes.items())) for stage, codes in by_reason.items()},
        "text_model": text_model_name,
        "matcher": cfg.matcher,
        "verdicts": verdicts,
        "judge": None if judge is None else {
            "model": judge_name, "cache_key_name": judge.name, "prompt_version": JUDGE_PROMPT_VERSION,
            "cache": str(judge.path), "asked": judge.asked, "calls": judge.calls, "cached": judge.cached},
        "settings": asdict(cfg),
        "signals_fingerprint": signals_fingerprint,
        "wall_seconds": time.time() - start,
    }
    write_json_atomic(report, out / FILTER_REPORT)
    write_manifest({"schema_version": SCHEMA_VERSION, "kind": "lavit_sft", "teacher": source["teacher"],
                    "text_model": text_model_name, "judge": judge_name, "extract_settings": source["settings"],
                    "filter_settings": asdict(cfg), "signals_fingerprint": signals_fingerprint,
                    "counts": {"kept": len(kept), "dropped": len(dropped)}}, out)
    return report

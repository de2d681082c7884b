"""`lavit extract`: teacher answers and teacher signals for every sample, stored resumably.

    lavit extract samples=data/viscot_363k.json image_root=data/images teacher=Qwen/Qwen2.5-VL-32B-Instruct \
        out=runs/signals device_map=auto

Per batch of samples: greedy teacher answers (one batched `generate`), then ONE forward pass over
`[image, question, teacher answer]` in which the `lavit_sdpa` attention function aggregates A_traj
(eq. 2) for the chosen layers and query tokens, and the final-layer states at the image tokens give
V_sem; S_focus (eq. 1) follows from A_traj and the sample's box. With kd_top_k = k the same pass applies the
teacher's LM head at the positions that produce its answer tokens and end-of-turn token, and keeps the top k of
each next-token distribution (the `kd_*` columns). Batches are fixed groups of input positions, so an interrupted
and resumed run stores exactly what an uninterrupted run stores.

With `engine=vllm` a worker runs in two phases: first vLLM answers every sample of its share (one journal line
per batch group in `OUT/teacher_answers-wIIIofNNN.jsonl`, appended after each vLLM call), then vLLM is shut down
and the probe pass reads those answers, in transformers, group by group as above. A run killed in the answer
phase resumes it from the journal; one killed in the probe pass skips the answer phase (every answer is
journaled) and continues from the stored rows.

A rerun checks that the samples file still gives every stored id the fields its row was extracted from (each row
records their fingerprint, `sample_sha256`); a changed sample is refused, or with changed_samples=reextract its row
alone is deleted and extracted again. A journaled answer is used only while its sample is unchanged.

Under torchrun / accelerate launch each rank places the teacher on its own devices (`teacher_placement`): with
device_map=auto and L ranks on a node of N GPUs, rank r splits it over GPUs [r*N/L, (r+1)*N/L); without CUDA
every rank loads it onto the CPU.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lavit.data.collator import LavitCollator
from lavit.data.fingerprints import file_fingerprint
from lavit.data.examples import IGNORE_INDEX, TrainingSample, build_example
from lavit.data.run_dir import refuse_inputs_inside, resolve_paths
from lavit.data.samples import (
    ImageLimits,
    Rejection,
    Sample,
    TextLimits,
    check_text,
    load_image,
    pixel_box,
    read_jsonl_samples,
    resolve_image,
    sample_fingerprint,
)
from lavit.data.signal_store import (
    SAMPLE_FINGERPRINT,
    SCHEMA_VERSION,
    ShardWriter,
    changed_ids,
    create_store,
    open_worker_writer,
    pending_row,
    read_journal,
    remove_changed_rows,
    store_counts,
    stored_sample_fingerprints,
    update_manifest,
    write_json_atomic,
)
from lavit.data.visual_cot import read_visual_cot
from lavit.inference.engines import VllmEngine, import_vllm
from lavit.inference.generate import generate_answers
from lavit.models.checkpoint import load_for_inference, load_model_and_processor
from lavit.models.families import family_of
from lavit.models.grid import processor_pixel_limits
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.probe import TrajectoryProbe, parse_layers, query_mask
from lavit.teacher.signals import s_focus


def read_samples(path: str, input_format: str = "auto", lvr_box_format: str = "normalized") -> list[Sample]:
    """The samples of `path`; a file holding none is an error saying what it holds (an empty store would
    otherwise be written, and the run reported as a success)."""
    if not path:
        raise ValueError("no input samples given (set samples=PATH)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    fmt = input_format if input_format != "auto" else ("jsonl" if path.endswith(".jsonl") else "visual_cot")
    samples = read_jsonl_samples(path) if fmt == "jsonl" else read_visual_cot(path, lvr_box_format=lvr_box_format)
    if not samples:
        raise ValueError(f"samples file {path} holds no sample: {describe_empty(Path(path), fmt)}; nothing to extract")
    return samples


def describe_empty(path: Path, fmt: str) -> str:
    """What a samples file that yielded no sample holds, in words."""
    size = path.stat().st_size
    if not size:
        return "it is empty (0 bytes)"
    if fmt == "visual_cot":
        return "its JSON list has no record"
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return f"only blank lines ({len(lines)} lines, {size} bytes)"


@dataclass
class Prepared:
    index: int
    sample: Sample
    image: Image.Image
    bbox: list[float] | None


@dataclass
class KdTargets:
    """The teacher's next-token distribution at the T positions that produce its answer tokens and its end-of-turn
    token (exactly the positions a student's labels hold answer tokens for), its top k kept."""

    token_ids: np.ndarray  # [T] int32, the tokens produced there
    tokens: list[str]  # [T] their strings in the teacher's tokenizer
    topk_ids: np.ndarray  # [T, k] int32
    topk_tokens: list[str | None]  # [T*k], None for an id past the teacher's tokenizer (its head may be larger)
    topk_logprobs: np.ndarray  # [T, k] float32, log softmax(logits / τ)
    temperature: float

    def row_fields(self) -> dict:
        """The store's `kd_*` columns of this sample."""
        return {"kd_token_ids": self.token_ids.tolist(), "kd_tokens": self.tokens,
                "kd_topk_ids": self.topk_ids.ravel().tolist(), "kd_topk_tokens": self.topk_tokens,
                "kd_topk_logprobs": self.topk_logprobs.ravel().tolist(), "kd_temperature": self.temperature}


@dataclass
class TeacherSignals:
    a_traj: np.ndarray  # [N_img] float32, raw eq.-2 aggregate
    grid: tuple[int, int, int]  # merged-token (t, h, w)
    v_sem: np.ndarray  # [D_teacher] float16
    kd: KdTargets | None = None  # with kd_top_k > 0


@dataclass
class TokenTrace:
    """A model's view of one sequence, aligned with generation: slot i is the query position whose output
    is text token i (its predecessor), as `generate(output_attentions=True)` would pair them."""

    a_traj: np.ndarray  # [N_img] mean over the query positions
    grid: tuple[int, int, int]
    token_ids: np.ndarray  # [Q] the tokens these queries produce, in sequence order
    token_maps: np.ndarray  # [Q, N_img] each producing query's attention to the image tokens
    hidden: np.ndarray  # [Q, D] final-layer states at the producing queries
    is_answer: np.ndarray  # [Q] bool, the produced token is an answer token (not a latent, not end-of-turn)


class SignalExtractor:
    """Teacher answers + signals for batches of prepared samples."""

    def __init__(self, model, processor, *, layers: str = "all", queries: str = "after_image",
                 system_prompt: str | None = None, max_new_tokens: int = 128, latent_tokens: list[str] | None = None,
                 kd_top_k: int = 0, kd_temperature: float = 1.0):
        self.latent_tokens = list(latent_tokens or [])  # a LaViT student's maps are read on [I, X_q, V, X_ans]
        self.model = model
        self.processor = processor
        self.family = family_of(model)
        self.backbone = self.family.backbone(model)  # no LM head needed for signals
        text_config = model.config.text_config
        self.layers = parse_layers(layers, text_config.num_hidden_layers, self.family.attention_layers(text_config))
        self.queries = queries
        self.system_prompt = system_prompt or None
        self.max_new_tokens = max_new_tokens
        self.collate = LavitCollator(processor.tokenizer.pad_token_id)
        self.kd_top_k = kd_top_k
        self.kd_temperature = kd_temperature
        if kd_top_k:
            head_rows = model.get_output_embeddings().weight.shape[0]
            if kd_top_k > head_rows:
                raise ValueError(f"kd_top_k={kd_top_k} is more than the teacher's {head_rows} output rows")
            # every id's string, once: the top-k of every position is looked up here
            self.token_strings = processor.tokenizer.convert_ids_to_tokens(list(range(len(processor.tokenizer))))

    def answers(self, images: list[Image.Image], questions: list[str]) -> list[str]:
        return generate_answers(self.model, self.processor, images, questions, latent_tokens=[], mode="none",
                                system_prompt=self.system_prompt, max_new_tokens=self.max_new_tokens)

    def prepare_batch(self, ids: list[str], images: list[Image.Image], questions: list[str],
                      answers: list[str]) -> dict:
        """Tokenised, right-padded `[image, question, answer]` batch with the query mask of `queries`."""
        examples = [build_example(self.processor, TrainingSample(i, im, q, a), self.latent_tokens,
                                  system_prompt=self.system_prompt)
                    for i, im, q, a in zip(ids, images, questions, answers)]
        batch = self.collate(examples)
        eos = self.processor.tokenizer.eos_token_id
        answer_mask = (batch["labels"] != IGNORE_INDEX) & ~batch["latent_mask"] & (batch["input_ids"] != eos)  # [B, S]
        queries = query_mask(self.queries, batch["image_mask"], answer_mask, batch["attention_mask"])
        batch["query_mask"] = queries & ~batch["latent_mask"]  # latent tokens are never text queries
        return batch

    def _forward(self, batch: dict) -> tuple[TrajectoryProbe, torch.Tensor]:
        device = self.model.device
        probe = TrajectoryProbe(batch["query_mask"].to(device), self.layers)
        hidden = self.backbone(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device),
                               pixel_values=batch["pixel_values"].to(device, self.model.dtype),
                               image_grid_thw=batch["image_grid_thw"].to(device),
                               mm_token_type_ids=batch["mm_token_type_ids"].to(device),
                               use_cache=False, lavit_probe=probe).last_hidden_state  # [B, S, D]
        return probe, hidden

    @torch.no_grad()
    def forward_signals(self, batch: dict) -> list[TeacherSignals]:
        """The single signal pass: backbone forward with the trajectory probe, then pooling (and, with kd_top_k,
        the teacher's top-k next tokens where it produces its answer)."""
        probe, hidden = self._forward(batch)
        signals = self._signals(batch, probe, hidden)
        if self.kd_top_k:
            for sig, kd in zip(signals, self.kd_targets(batch, hidden), strict=True):
                sig.kd = kd
        return signals

    def kd_targets(self, batch: dict, hidden: torch.Tensor) -> list[KdTargets]:
        """Per sample, the LM head at the positions p whose next token p + 1 is labelled and not a latent: the
        answer tokens and the end-of-turn token (`build_example`'s labels), each distribution's top k at τ."""
        head = self.model.get_output_embeddings()
        produces = (batch["labels"][:, 1:] != IGNORE_INDEX) & ~batch["latent_mask"][:, 1:]  # [B, S-1]
        strings = self.token_strings
        out = []
        for b in range(hidden.shape[0]):
            positions = produces[b].nonzero().flatten()  # [T]
            states = hidden[b, positions.to(hidden.device)].to(head.weight.device)  # [T, D]
            logprobs = torch.log_softmax(head(states).float() / self.kd_temperature, dim=-1)  # [T, V_head]
            top = logprobs.topk(self.kd_top_k, dim=-1)  # [T, k]
            token_ids = batch["input_ids"][b, positions + 1].numpy().astype(np.int32)  # [T]
            topk_ids = top.indices.cpu().numpy().astype(np.int32)  # [T, k]
            out.append(KdTargets(token_ids, [strings[i] for i in token_ids],
                                 topk_ids, [strings[i] if i < len(strings) else None for i in topk_ids.ravel()],
                                 top.values.cpu().numpy().astype(np.float32), self.kd_temperature))
        return out

    def _signals(self, batch: dict, probe: TrajectoryProbe, hidden: torch.Tensor) -> list[TeacherSignals]:
        a_full = probe.a_traj().cpu()  # [B, S]
        image_mask = batch["image_mask"].to(hidden.device)  # [B, S]
        pooled = (hidden.float() * image_mask[..., None]).sum(1) / image_mask.sum(1, keepdim=True)  # [B, D]
        pooled = pooled.cpu()
        merge = self.processor.image_processor.merge_size
        out = []
        for b in range(hidden.shape[0]):
            t, h, w = (int(x) for x in batch["image_grid_thw"][b])
            image_pos = batch["image_index"][b][batch["image_valid"][b]]  # [N_img]
            out.append(TeacherSignals(a_traj=a_full[b, image_pos].numpy().astype(np.float32),
                                      grid=(t, h // merge, w // merge),
                                      v_sem=pooled[b].numpy().astype(np.float16)))
        return out

    @torch.no_grad()
    def forward_traces(self, batch: dict) -> list[TokenTrace]:
        """Per text token after the image: the attention map and final state of the query that produces it
        (the analysis view). A LaViT student's first answer token is produced at its last latent token."""
        produced = producing_queries(batch["image_mask"], batch["latent_mask"], batch["attention_mask"])
        probe, hidden = self._forward({**batch, "query_mask": produced})
        per_query = probe.per_query().cpu()  # [B, Q, S]
        signals = self._signals(batch, probe, hidden)
        eos = self.processor.tokenizer.eos_token_id
        traces = []
        for b, sig in enumerate(signals):
            n = int(probe.counts[b])
            rows = probe.rows[b, :n].cpu()  # [Q_b] query positions
            nxt = rows + 1  # [Q_b] the tokens they produce
            image_pos = batch["image_index"][b][batch["image_valid"][b]]  # [N_img]
            token_ids = batch["input_ids"][b, nxt]
            answer = (batch["labels"][b, nxt] != IGNORE_INDEX) & ~batch["latent_mask"][b, nxt] & (token_ids != eos)
            traces.append(TokenTrace(sig.a_traj, sig.grid, token_ids.numpy(), per_query[b, :n][:, image_pos].numpy(),
                                     hidden[b, rows.to(hidden.device)].float().cpu().numpy(), answer.numpy()))
        return traces

    def signals(self, ids: list[str], images: list[Image.Image], questions: list[str],
                answers: list[str]) -> list[TeacherSignals]:
        """One forward pass over `[image, question, answer]` for the whole batch."""
        return self.forward_signals(self.prepare_batch(ids, images, questions, answers))


def producing_queries(image_mask: torch.Tensor, latent_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: positions p after the image whose next token p + 1 is a real, non-latent token — the
    queries that produce the text after the image (latent tokens are produced too, but are not text)."""
    positions = torch.arange(image_mask.shape[1], device=image_mask.device)
    last_image = torch.where(image_mask, positions, -1).amax(dim=1, keepdim=True)  # [B, 1]
    text = attention_mask.bool() & ~latent_mask & (positions[None] > last_image)  # [B, S]
    queries = torch.zeros_like(text)
    queries[:, :-1] = text[:, 1:]
    return queries & (positions[None] > last_image)


def prepare(index: int, sample: Sample, image_root: Path, limits: ImageLimits,
            text_limits: TextLimits | None = None) -> Prepared:
    """Checks text (with the teacher tokenizer's `text_limits`), image and box; raises `Rejection` with the
    reason. Every failure of reading, decoding or tokenising this one sample is a `Rejection`, so the other
    samples of its batch go on and a rerun skips it (a stored row)."""
    check_text(sample, text_limits)
    image = load_image(resolve_image(image_root, sample.image), limits)
    return Prepared(index, sample, image, pixel_box(sample, image.size))


def prepare_group(group: list[tuple[int, Sample]], image_root: Path, limits: ImageLimits,
                  text_limits: TextLimits | None) -> tuple[dict[int, dict], list[Prepared]]:
    """Each sample's pending row (its rejection reason filled in where `prepare` refuses it) and the prepared rest."""
    rows: dict[int, dict] = {}
    ready: list[Prepared] = []
    for index, sample in group:
        rows[index] = pending_row(index, sample.id, sample.image, sample.question, sample.answer, sample.source)
        rows[index][SAMPLE_FINGERPRINT] = sample_fingerprint(sample)
        try:
            ready.append(prepare(index, sample, image_root, limits, text_limits))
        except Rejection as rej:
            rows[index]["reject_reason"] = str(rej)
    return rows, ready


def process_group(extractor: SignalExtractor, group: list[tuple[int, Sample]], image_root: Path,
                  limits: ImageLimits, text_limits: TextLimits | None = None,
                  answers: dict[int, str] | None = None) -> list[dict]:
    """The group's rows: teacher answers (generated, or read from `answers` by input index: the journal of
    the vLLM answer phase), then the signal pass."""
    rows, ready = prepare_group(group, image_root, limits, text_limits)
    if ready:
        if answers is None:
            answers = extractor.answers([p.image for p in ready], [p.sample.question for p in ready])
        else:
            missing = [p.sample.id for p in ready if p.index not in answers]
            if missing:
                raise RuntimeError(f"no journaled teacher answer for samples {missing[:5]}: the answer phase did not "
                                   "cover them (was the journal edited?); delete the teacher_answers-*.jsonl files "
                                   "to answer again")
            answers = [answers[p.index] for p in ready]
        for p, answer in zip(ready, answers):
            rows[p.index]["image_size"] = list(p.image.size)
            rows[p.index]["bbox"] = p.bbox
            rows[p.index]["teacher_answer"] = answer
            if not answer.strip():
                rows[p.index]["reject_reason"] = "teacher_answer_empty"
        ready = [p for p, a in zip(ready, answers) if a.strip()]
        answers = [a for a in answers if a.strip()]
    if ready:
        signals = extractor.signals([p.sample.id for p in ready], [p.image for p in ready],
                                    [p.sample.question for p in ready], answers)
        for p, sig in zip(ready, signals):
            row = rows[p.index]
            if not (np.isfinite(sig.a_traj).all() and np.isfinite(sig.v_sem).all()) or sig.a_traj.sum() <= 0:
                row["reject_reason"] = "teacher_signal_nonfinite: NaN/inf or no mass in A_traj or V_sem"
                continue
            if sig.kd is not None and not np.isfinite(sig.kd.topk_logprobs).all():
                row["reject_reason"] = "teacher_signal_nonfinite: NaN/inf in the top-k log-probabilities"
                continue
            row.update(status="ok", a_traj=sig.a_traj.tolist(), a_traj_grid=list(sig.grid), v_sem=sig.v_sem.tolist(),
                       s_focus=None if p.bbox is None else s_focus(sig.a_traj, sig.grid, p.bbox, p.image.size),
                       **(sig.kd.row_fields() if sig.kd is not None else {}))
    return [rows[i] for i, _ in group]


def open_store(cfg: ExtractConfig, num_inputs: int) -> ShardWriter:
    """This worker's writer of the store `cfg.out`, which is created if absent — exclusively: of runs starting
    at one instant one creates it (recording its worker count) and the others compare — and refused, before
    anything is written, if it holds other signals, if another live process writes this worker's shards, or if
    workers of another count write it now (`open_worker_writer`)."""
    out = Path(cfg.out)
    settings = cfg.signal_settings()
    worker, workers = cfg.worker()
    manifest, _ = create_store(out, {"schema_version": SCHEMA_VERSION, "kind": "teacher_signals",
                                     "teacher": cfg.teacher, "settings": settings, "num_input_samples": num_inputs,
                                     "workers": workers})
    if manifest.get("kind") != "teacher_signals":
        raise ValueError(f"{out} holds a {manifest.get('kind')!r} store, not teacher signals; choose a new out=")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{out}: made with schema version {manifest.get('schema_version')}, this lavit writes "
                         f"{SCHEMA_VERSION}; extract into a new directory")
    stored = manifest.get("settings") or {}
    stored = resolve_paths(stored, [k for k in ("samples", "image_root") if k in stored])  # older stores: as typed
    # stores from before these settings: answered by transformers, no teacher top-k stored
    stored = {"engine": "transformers", "kd_top_k": 0, "kd_temperature": 1.0, **stored}
    differ = sorted(k for k in set(settings) | set(stored) if settings.get(k) != stored.get(k))
    if differ:
        shown = "; ".join(f"{k}: {stored.get(k)!r} there, {settings.get(k)!r} here" for k in differ[:6])
        raise ValueError(f"{out} was extracted with different settings ({shown}{'; …' if len(differ) > 6 else ''}); "
                         "resume needs the same settings, or choose a new out=")
    return open_worker_writer(out, worker, workers)


def record_pixel_limits(out: Path, limits: dict[str, int]) -> None:
    """The manifest's `pixel_limits`: those the teacher's processor applies (min/max_pixels = 0 leave its own
    default in force). Every stored grid depends on them, so a resumed run must resize the same way."""
    def change(manifest: dict) -> None:
        if manifest.setdefault("pixel_limits", limits) != limits:
            raise ValueError(f"{out} was extracted with pixel limits {manifest['pixel_limits']}, this teacher's "
                             f"processor applies {limits}; resume with the same limits, or choose a new out=")

    update_manifest(out, change)


def record_counts(out: Path, num_inputs: int, samples_fingerprint: dict | None = None) -> dict:
    """The manifest's counts, derived from the shards under the store's lock (so the last worker to finish
    counts every worker's shards), `num_input_samples`: the largest input any run asked this store for, and
    where given `samples_fingerprint`: the samples file's content as the latest run read it (informational: each
    row's own fingerprint is what a rerun checks)."""
    def change(manifest: dict) -> None:
        manifest["counts"] = store_counts(out)
        manifest["num_input_samples"] = max(manifest.get("num_input_samples", 0), num_inputs)
        if samples_fingerprint is not None:
            manifest["samples_fingerprint"] = samples_fingerprint

    return update_manifest(out, change)["counts"]


ANSWER_JOURNAL = "teacher_answers-w{worker:03d}of{workers:03d}.jsonl"


def read_answer_journals(out: Path, fingerprints: Mapping[int, str]) -> tuple[dict[int, str], set[int]]:
    """(teacher answers by input index, the batch groups answered) from every worker's journal in the store: the
    store's settings are fixed, so any worker's answers hold, whatever the sharding was. A line torn by a kill is
    dropped (and rewritten away), its group answered again; so is a line answering a sample whose fields have
    changed since (`fingerprints`: the current `sample_fingerprint` by input index). Lines written before lavit
    recorded the fingerprints cannot be checked and are used as they are."""
    answers: dict[int, str] = {}
    groups: set[int] = set()
    for path in sorted(out.glob("teacher_answers-w*.jsonl")):
        for entry in read_journal(path):
            if any(fingerprints.get(int(i)) != sha for i, sha in entry.get("samples", {}).items()):
                continue
            groups.add(entry["group"])
            answers.update({int(i): a for i, a in entry["answers"].items()})
    return answers, groups


def vllm_answer_phase(cfg: ExtractConfig, out: Path, groups: list[tuple[int, list[tuple[int, Sample]]]],
                      done: set[str], limits: ImageLimits, fingerprints: Mapping[int, str]) -> dict[int, str]:
    """Phase 1 of engine=vllm: the teacher's answers for `groups` ((group number, samples)), journaled with the
    fingerprints of the samples answered (`fingerprints`, by input index); vLLM is shut down before returning, so
    the probe pass can load the teacher."""
    answers, answered = read_answer_journals(out, fingerprints)
    pending = [(g, [(i, s) for i, s in grp if s.id not in done]) for g, grp in groups if g not in answered]
    if not pending:
        return answers
    engine = VllmEngine(cfg.teacher, dtype=cfg.dtype, seed=cfg.seed, tensor_parallel_size=cfg.tensor_parallel_size,
                        max_model_len=cfg.vllm_max_model_len, max_images=1, min_pixels=cfg.min_pixels,
                        max_pixels=cfg.max_pixels, enforce_eager=cfg.vllm_enforce_eager)
    worker, workers = cfg.worker()
    try:
        record_pixel_limits(out, processor_pixel_limits(engine.processor.image_processor))
        text_limits = TextLimits.for_tokenizer(engine.processor.tokenizer, cfg.max_text_tokens)
        bar = tqdm(total=sum(len(grp) for _, grp in pending), unit="sample", desc="extract: vLLM answers")
        with open(out / ANSWER_JOURNAL.format(worker=worker, workers=workers), "a", encoding="utf-8") as journal:
            start = 0
            while start < len(pending):
                chunk, size = [], 0
                while start < len(pending) and (not chunk or size + len(pending[start][1]) <= cfg.vllm_batch_size):
                    chunk.append(pending[start])
                    size += len(pending[start][1])
                    start += 1
                prepared = [(g, prepare_group(grp, Path(cfg.image_root), limits, text_limits)[1]) for g, grp in chunk]
                flat = [p for _, ready in prepared for p in ready]
                texts = engine.generate([p.image for p in flat], [p.sample.question for p in flat], latent_tokens=[],
                                        mode="none", system_prompt=cfg.system_prompt or None,
                                        max_new_tokens=cfg.max_new_tokens) if flat else []
                got = {p.index: a for p, a in zip(flat, texts, strict=True)}
                answers.update(got)
                journal.write("".join(json.dumps({"group": g, "answers": {str(p.index): got[p.index] for p in ready},
                                                  "samples": {str(i): fingerprints[i] for i, _ in grp}}) + "\n"
                                      for (_, grp), (g, ready) in zip(chunk, prepared, strict=True)))
                journal.flush()
                os.fsync(journal.fileno())  # a kill after this point keeps the call's answers
                bar.update(size)
        bar.close()
    finally:
        engine.close()
    return answers


@dataclass
class TeacherPlacement:
    """Where this worker loads the teacher (recorded in its results as `placement`)."""

    device_map: str  # what the loader gets: '' = one device (LOCAL_RANK's GPU, else CPU)
    gpus: list[int]  # this worker's GPUs; [] = CPU
    rule: str  # why, in words
    confined: bool = False  # a split over `gpus` only, a data-parallel rank's share of the node's GPUs

    def max_memory(self) -> dict[int, int] | None:
        """For a confined split: the free memory of this rank's GPUs, which confines transformers' device map to
        them (a GPU absent from `max_memory` gets no weights); None otherwise."""
        return {i: torch.cuda.mem_get_info(i)[0] for i in self.gpus} if self.confined else None


def rank_gpus(local_rank: int, local_world_size: int, gpu_count: int) -> list[int]:
    """Rank `local_rank`'s share of a node's `gpu_count` GPUs split among `local_world_size` ranks: the contiguous
    block [r*N/L, (r+1)*N/L). Refused (ValueError) unless the ranks divide the GPUs evenly."""
    if not 0 <= local_rank < local_world_size:
        raise ValueError(f"LOCAL_RANK {local_rank} is not below LOCAL_WORLD_SIZE {local_world_size}")
    if gpu_count < local_world_size or gpu_count % local_world_size:
        divisors = [d for d in range(1, gpu_count + 1) if gpu_count % d == 0]
        raise ValueError(f"{local_world_size} data-parallel ranks on this node cannot share its {gpu_count} visible "
                         f"GPUs evenly: launch --nproc_per_node with one of {divisors}, or start one worker per GPU "
                         "group (CUDA_VISIBLE_DEVICES=... lavit extract ... --shard i/n), or set device_map='' (one "
                         f"GPU per rank, needs {local_world_size} GPUs)")
    share = gpu_count // local_world_size
    return list(range(local_rank * share, (local_rank + 1) * share))


def teacher_placement(device_map: str, env: Mapping[str, str], gpu_count: int) -> TeacherPlacement:
    """This worker's teacher placement, from `device_map`, the launcher's environment (`env`: WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE) and the number of visible GPUs. Refuses, before anything loads, a placement
    that would not fit: ranks that cannot share the node's GPUs evenly, or a data-parallel launch that does not
    say how many ranks share the node."""
    if gpu_count == 0:
        return TeacherPlacement("", [], "no CUDA device: the teacher loads onto the CPU")
    if device_map == "cpu":
        return TeacherPlacement("cpu", [], "device_map=cpu: the teacher loads onto the CPU")
    local_rank = int(env.get("LOCAL_RANK", 0))
    if int(env.get("WORLD_SIZE", 1)) <= 1 or "LOCAL_RANK" not in env:
        if device_map:
            return TeacherPlacement(device_map, list(range(gpu_count)), f"one worker: device_map={device_map} "
                                    f"splits the teacher over the {gpu_count} visible GPUs")
        return TeacherPlacement("", [local_rank], f"one worker on GPU {local_rank}")
    if "LOCAL_WORLD_SIZE" not in env:
        raise ValueError("a data-parallel launch (WORLD_SIZE > 1, LOCAL_RANK set) without LOCAL_WORLD_SIZE: lavit "
                         "cannot tell how many ranks share this node's GPUs; launch with torchrun or accelerate "
                         "launch, or set LOCAL_WORLD_SIZE")
    local_world = int(env["LOCAL_WORLD_SIZE"])
    if not device_map:
        if gpu_count < local_world:
            raise ValueError(f"device_map='' puts each of the {local_world} data-parallel ranks on this node on its "
                             f"own GPU, but {gpu_count} are visible: launch --nproc_per_node {gpu_count} or fewer")
        return TeacherPlacement("", [local_rank], f"device_map='': rank {local_rank} of {local_world} on this node "
                                f"on GPU {local_rank}")
    gpus = rank_gpus(local_rank, local_world, gpu_count)
    rule = (f"device_map={device_map} under {local_world} ranks on a node of {gpu_count} GPUs: rank {local_rank} "
            f"splits the teacher over GPUs {gpus}")
    if len(gpus) == 1:
        return TeacherPlacement("", gpus, rule)  # one GPU per rank: LOCAL_RANK's, as with device_map=''
    return TeacherPlacement(device_map, gpus, rule, confined=len(gpus) < gpu_count)


def load_teacher(cfg: ExtractConfig, placement: TeacherPlacement):
    """The teacher and its processor, placed as `placement` says."""
    max_memory = placement.max_memory()
    if max_memory is None:
        return load_for_inference(cfg.teacher, dtype=cfg.dtype, device_map=placement.device_map,
                                  min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, seed=cfg.seed)
    # load_for_inference takes no max_memory: the split confined to this rank's GPUs goes to from_pretrained here
    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    model, processor = load_model_and_processor(cfg.teacher, dtype=dtype, min_pixels=cfg.min_pixels or None,
                                                max_pixels=cfg.max_pixels or None, seed=cfg.seed,
                                                device_map=placement.device_map, max_memory=max_memory)
    return model.eval(), processor


def settle_changed_samples(cfg: ExtractConfig, out: Path, current: dict[str, str]) -> tuple[list[str], int]:
    """Compare every stored row with its sample in the samples file now (`current`: id → `sample_fingerprint`). A
    changed sample (other image path, question, answer, box or source than its row was extracted from) is refused,
    listing the ids, or with changed_samples=reextract its row is deleted so that this run extracts it again.
    Returns (the ids deleted, the number of stored rows that record no fingerprint and so cannot be checked)."""
    stored = stored_sample_fingerprints(out)
    unchecked = sum(sha is None for sha in stored.values())
    if unchecked:
        warnings.warn(f"{out}: {unchecked} stored rows were written before lavit recorded each sample's fingerprint "
                      "(sample_sha256): whether their samples changed since cannot be checked", RuntimeWarning,
                      stacklevel=3)
    changed = changed_ids(stored, current)
    if not changed:
        return [], unchecked
    if cfg.changed_samples == "refuse":
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise ValueError(f"{len(changed)} samples of {cfg.samples} changed (image path, question, answer, box or "
                         f"source) since their rows in {out} were extracted: {shown}. Their rows hold the teacher "
                         "answers and signals of the old fields; changed_samples=reextract deletes and extracts "
                         "only those rows again, or extract into a new out=")
    return remove_changed_rows(out, current), unchecked


def run_extract(cfg: ExtractConfig) -> dict:
    start = time.time()
    if cfg.engine == "vllm":
        import_vllm()  # missing vllm fails before the store is created
    placement = teacher_placement(cfg.device_map, os.environ, torch.cuda.device_count())
    # an out that is, holds or lies inside an input is refused before the store is created in it
    refuse_inputs_inside(cfg.out, {"samples": cfg.samples, "image_root": cfg.image_root, "teacher": cfg.teacher},
                         folders=("image_root",))
    samples = read_samples(cfg.samples, cfg.input_format, cfg.lvr_box_format)
    samples_fingerprint = file_fingerprint(cfg.samples)
    fingerprints = [sample_fingerprint(s) for s in samples]
    if not Path(cfg.image_root or ".").is_dir():  # else every sample would be stored as 'image_missing'
        raise NotADirectoryError(f"image_root {cfg.image_root} is not a directory")
    indexed = list(enumerate(samples))
    # Batches are fixed groups of input positions, cut from the full list: a run limited by max_samples
    # (rounded up to whole groups) and its later continuation batch exactly as one uninterrupted run.
    groups = [indexed[g:g + cfg.batch_size] for g in range(0, len(indexed), cfg.batch_size)]
    if cfg.max_samples:
        groups = groups[:-(-cfg.max_samples // cfg.batch_size)]
    num_inputs = sum(len(g) for g in groups)
    out = Path(cfg.out)
    worker, workers = cfg.worker()
    with open_store(cfg, num_inputs) as writer:
        reextracted, unchecked = settle_changed_samples(cfg, out, {s.id: f for s, f in zip(samples, fingerprints)})
        done = writer.stored_ids()
        ours = [(g, grp) for g, grp in enumerate(groups) if g % workers == worker]
        todo = [(g, grp) for g, grp in ours if not all(s.id in done for _, s in grp)]
        mine = sum(len(grp) for _, grp in ours)
        processed = 0
        limits = ImageLimits(cfg.min_image_side, cfg.max_image_pixels)
        # engine=vllm: every answer first (phase 1), the probe pass reads them; transformers answers per group
        answers = (vllm_answer_phase(cfg, out, todo, done, limits, dict(enumerate(fingerprints)))
                   if todo and cfg.engine == "vllm" else None)
        if todo:
            tqdm.write(f"extract worker {worker}/{workers}: {placement.rule}", file=sys.stderr)
            model, processor = load_teacher(cfg, placement)
            record_pixel_limits(out, processor_pixel_limits(processor.image_processor))
            extractor = SignalExtractor(model, processor, layers=cfg.layers, queries=cfg.queries,
                                        system_prompt=cfg.system_prompt, max_new_tokens=cfg.max_new_tokens,
                                        kd_top_k=cfg.kd_top_k, kd_temperature=cfg.kd_temperature)
            text_limits = TextLimits.for_tokenizer(processor.tokenizer, cfg.max_text_tokens)
            pending: list[dict] = []
            bar = tqdm(total=mine, initial=mine - sum(len(grp) for _, grp in todo), unit="sample", desc="extract")
            for _, grp in todo:
                grp = [(i, s) for i, s in grp if s.id not in done]
                pending.extend(process_group(extractor, grp, Path(cfg.image_root), limits, text_limits, answers))
                processed += len(grp)
                bar.update(len(grp))
                if len(pending) >= cfg.rows_per_file:
                    writer.write(pending)
                    pending = []
            if pending:
                writer.write(pending)
            bar.close()
        counts = record_counts(out, num_inputs, samples_fingerprint)
        wall = time.time() - start
        results = {"worker": f"{worker}/{workers}", "processed_this_run": processed, "skipped_already_stored":
                   mine - processed, "wall_seconds": wall, "samples_per_second": processed / wall if wall else 0.0,
                   "store_counts": counts, "changed_samples_reextracted": reextracted,
                   "rows_without_fingerprint": unchecked, "placement": asdict(placement), "settings": asdict(cfg)}
        write_json_atomic(results, out / f"extract_results-w{worker:03d}of{workers:03d}.json")
    return results

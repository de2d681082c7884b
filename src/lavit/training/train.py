"""`lavit train`: one LaViT (or Naive-SFT, or distillation-baseline) student training run, as a plain function.

    lavit train recipes/lavit_qwen2_5_vl_3b.yaml data=DIR image_root=DIR output_dir=runs/lavit

One run per output folder: the main process holds `output_dir/lavit.lock` for the whole run, refuses a
folder holding another run (unless `resume=` continues it or `overwrite=true` clears it), and records the
run's settings and the content fingerprint of its training data (`run_settings.json`, and in every
checkpoint's marker) so a resume with settings that change the run, or on data rewritten since, is refused
with the differences listed. `resume=latest` takes the newest complete checkpoint and moves torn ones to
`output_dir/torn/`.
"""

from __future__ import annotations

import json
from collections import Counter
import os
import shutil
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from transformers import PrinterCallback, ProgressCallback, TrainingArguments, set_seed

from lavit.config import config_to_dict
from lavit.data.collator import LavitCollator
from lavit.data.fingerprints import fingerprint_differences
from lavit.data.run_dir import RunLock, describe_holder, refuse_inputs_inside, resolve_paths, settings_differences
from lavit.data.signal_store import write_json_atomic
from lavit.data.sft_dataset import LavitSftDataset, data_fingerprint, read_sft_table
from lavit.models.checkpoint import enable_activation_checkpointing, export_student, load_model_and_processor
from lavit.models.continuous_latents import attach_latent_feedback, latent_feedback_for
from lavit.models.gating import GateSchedule
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.families import family_of
from lavit.models.projection_head import ProjectionHead
from lavit.training.callbacks import TRAIN_LOG, JsonlLogCallback, ProgressBarCallback
from lavit.training.lavit_config import MAY_CHANGE_ON_RESUME, LavitTrainConfig
from lavit.training.lavit_trainer import (
    LOSS_SUM,
    GammaCallback,
    LavitTrainer,
    checkpoint_folders,
    checkpoint_problem,
    checkpoint_step,
    read_checkpoint_marker,
)
from lavit.training.losses import KdObjective

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
RUN_SETTINGS = "run_settings.json"
DATA_FINGERPRINT = "data_fingerprint"  # recorded beside the settings: the training data's content (`data_fingerprint`)
RESULTS = "train_results.json"
DROPPED_ROWS = "dropped_rows.jsonl"
TORN = "torn"
# What a run writes into output_dir besides its checkpoint-N folders: a folder holding any of them holds a run.
RUN_ENTRIES = (RUN_SETTINGS, TRAIN_LOG, RESULTS, DROPPED_ROWS, "student", TORN)


def build_student(cfg: LavitTrainConfig, teacher_dim: int | None):
    """Model + processor + latent tokens + projection head, frozen and wrapped as `cfg` says."""
    if cfg.gate_attention == "flex" and not torch.cuda.is_available():
        raise ValueError("gate_attention=flex needs a CUDA device: torch's FlexAttention has no backward on a CPU "
                         "(gate_attention=auto or dense trains here)")
    # fp32 master weights whatever the compute precision: at lr 5e-6 most AdamW updates to bf16 weights round away
    dtype = torch.float32
    if cfg.precision == "bf16_pure":
        warnings.warn("precision=bf16_pure trains bf16 weights under plain AdamW: at small learning rates most "
                      "updates round to zero. Use precision=bf16 (fp32 master weights, bf16 autocast).", stacklevel=2)
        dtype = torch.bfloat16
    model, processor = load_model_and_processor(cfg.model, dtype=dtype, min_pixels=cfg.min_pixels,
                                                max_pixels=cfg.max_pixels, seed=cfg.seed)
    names = latent_token_names(cfg.num_latent_tokens, cfg.latent_token_template) if cfg.uses_latents else []
    latent_ids = add_latent_tokens(processor.tokenizer, model, names) if names else []
    # the design travels with the model (generation reads it there); a discrete run drops one a base may carry
    attach_latent_feedback(model, latent_feedback_for(model, cfg.latent_norm_match, len(processor.tokenizer),
                                                      latent_ids) if cfg.latent_design == "continuous" else None)
    if cfg.freeze_vision:
        family_of(model).vision_tower(model).requires_grad_(False)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS,
                          trainable_token_indices={"embed_tokens": latent_ids} if latent_ids else None)
        model = get_peft_model(model, lora)
    head = None
    if cfg.uses_latents and cfg.concept_loss:
        if not teacher_dim:
            raise ValueError("the concept loss needs V_sem targets to size the projection head")
        torch.manual_seed(cfg.seed)
        head = ProjectionHead(model.config.text_config.hidden_size, teacher_dim)
    student = LavitStudent(model, latent_ids, head, trajectory_loss=cfg.uses_latents and cfg.trajectory_loss,
                           gate_readout=cfg.uses_latents and cfg.gate_readout,
                           readout_mass=cfg.uses_latents and cfg.read_weight > 0)
    student.gate_attention = cfg.gate_attention
    return student, processor, names


def world_size() -> int:
    """Processes in this run, as torchrun / accelerate launch announce them (1 when launched plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 as the launcher announces it, before any process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def training_arguments(cfg: LavitTrainConfig, plan: dict[str, int]) -> TrainingArguments:
    """The Trainer's arguments (method=gkd: TRL's `DistillationConfig`, a subclass, with its own settings too)."""
    bf16 = cfg.precision in ("bf16", "bf16_pure") or (cfg.precision == "auto" and torch.cuda.is_available())
    values = dict(
        output_dir=cfg.output_dir, max_steps=cfg.max_steps, per_device_train_batch_size=plan["per_device_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"], learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        seed=cfg.seed, data_seed=cfg.seed, bf16=bf16,  # save_total_limit: LavitTrainer rotates after completion
        remove_unused_columns=False, report_to="none", dataloader_num_workers=cfg.dataloader_num_workers,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
    )
    if cfg.method == "gkd":
        return gkd_module().distillation_arguments(cfg, values)
    return TrainingArguments(**values)


def gkd_module():
    """`lavit.training.gkd`, imported only for method=gkd: TRL is an optional dependency (`pip install lavit[kd]`)."""
    try:
        from lavit.training import gkd
    except ImportError as err:
        raise ImportError(f"method=gkd trains through TRL's DistillationTrainer, which is not importable here ({err}): "
                          "pip install 'lavit[kd]' (trl>=1.16)") from None
    return gkd


def run_settings(cfg: LavitTrainConfig) -> dict:
    """The settings recorded with a run and compared on resume, paths absolute: one file spelled relative or
    absolute is one setting."""
    paths = ["data", "image_root", "output_dir", *(name for name in ("model", "teacher")
                                                   if getattr(cfg, name) and Path(getattr(cfg, name)).exists())]
    return resolve_paths(config_to_dict(cfg), paths)


def run_entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name in RUN_ENTRIES or checkpoint_step(p) is not None)


def set_aside(folder: Path) -> Path:
    """Move a torn checkpoint to `torn/` beside it, under a free name: out of the way of resume and rotation
    (and of the save that will write that step again), kept for a look."""
    aside = folder.parent / TORN / folder.name
    n = 1
    while aside.exists():
        n += 1
        aside = aside.with_name(f"{folder.name}.{n}")
    aside.parent.mkdir(exist_ok=True)
    folder.rename(aside)
    return aside


def cut_log(path: Path, step: int) -> None:
    """The JSON-lines log as it stood at `step`: the lines after it are of steps the resumed run trains
    again (a line torn by the kill goes too)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        if json.loads(line)["step"] <= step:
            kept.append(line)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def resume_checkpoint(cfg: LavitTrainConfig, out: Path) -> tuple[Path, dict]:
    """The checkpoint `cfg.resume` names (`latest`: the newest complete one in `out`) and its marker."""
    if cfg.resume == "latest":
        folders = checkpoint_folders(out)
        complete = [f for f in folders if not checkpoint_problem(f)]
        if not complete:
            torn = "".join(f"; {f.name}: {checkpoint_problem(f)}" for f in folders)
            raise FileNotFoundError(f"resume=latest but {out} holds no complete checkpoint{torn} (overwrite=true "
                                    "starts the run again)")
        return complete[-1], read_checkpoint_marker(complete[-1])
    checkpoint = Path(cfg.resume)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint folder")
    try:
        return checkpoint, read_checkpoint_marker(checkpoint)
    except ValueError as err:
        raise ValueError(f"resume={cfg.resume} is not a complete checkpoint ({err}); resume=latest takes the newest "
                         "complete one") from None


def data_changes(recorded: dict, current: dict) -> list[str]:
    """How the training data's content (`data_fingerprint`, per path) differs from what `recorded` holds: each
    path's fingerprint, then its row count where that changed too."""
    def rows(fingerprints: dict, name: str):
        return (fingerprints.get(name) or {}).get("rows", "?")

    changes = fingerprint_differences(recorded, current)
    return changes + [f"{name}: {rows(recorded, name)} rows → {rows(current, name)} rows"
                      for name in sorted(set(recorded) | set(current)) if rows(recorded, name) != rows(current, name)]


def check_same_data(cfg: LavitTrainConfig, recorded: list[tuple[str, dict]], current: dict, notes: list[str]) -> None:
    """Refuse a resume whose training data's content differs from what the run it continues trained on (each of
    `recorded`: (whose, their settings)); a run recorded before lavit fingerprinted data cannot be checked, which
    goes into `notes`."""
    for whose, before in recorded:
        if DATA_FINGERPRINT not in before:
            notes.append(f"{whose} recorded no fingerprint of its training data (it predates them): whether the "
                         "data changed since cannot be checked")
            continue
        changes = data_changes(before[DATA_FINGERPRINT], current)
        if changes:
            raise ValueError(f"resume={cfg.resume}: the training data differs from what {whose} trained on "
                             f"({'; '.join(changes)}). A resume continues on the data its run began with: restore "
                             "that data, or train on this data as a new run (another output_dir, or overwrite=true)")


def claim_output_dir(cfg: LavitTrainConfig, held: ExitStack) -> dict:
    """On the main process: lock `output_dir` for this run (held until `held` closes), fingerprint the training
    data, and refuse what would mix two runs in it. For a resume: the checkpoint, its settings and data checked,
    torn checkpoints set aside and the log cut back to its step. Nothing is moved or deleted before every check
    has passed."""
    out = Path(cfg.output_dir)
    refuse_inputs_inside(out, {"data": cfg.data, "image_root": cfg.image_root, "model": cfg.model,
                               **({"teacher": cfg.teacher} if cfg.teacher else {})}, key="output_dir",
                         folders=("image_root",))
    lock = held.enter_context(RunLock(out))
    notes = [f"took over {lock.path}, left by a run that ended without releasing it ({describe_holder(lock.stale)})"
             ] if lock.stale else []
    fingerprint = data_fingerprint(cfg.data)
    entries = run_entries(out)
    if not cfg.resume:
        if entries and not cfg.overwrite:
            raise ValueError(f"output_dir {out} holds another run ({', '.join(entries)}): resume=latest continues "
                             "it, overwrite=true deletes it first, or choose another output_dir")
        for name in entries:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink()
        return {"resume": None, "set_aside": [], "notes": notes, DATA_FINGERPRINT: fingerprint, "resumed_step": 0,
                "loss_sum_before": 0.0}
    checkpoint, marker = resume_checkpoint(cfg, out)
    settings = run_settings(cfg)
    recorded = [(f"the run that wrote {checkpoint}", marker.get("settings", {}))]
    if (out / RUN_SETTINGS).is_file():
        recorded.append((f"the run in {out}", json.loads((out / RUN_SETTINGS).read_text())))
    for whose, before in recorded:
        differences = settings_differences(before, settings, (*MAY_CHANGE_ON_RESUME, DATA_FINGERPRINT))
        if differences:
            may = ", ".join(k for k in MAY_CHANGE_ON_RESUME if k not in ("resume", "overwrite"))
            raise ValueError(f"resume={cfg.resume}: these settings differ from {whose}: {'; '.join(differences)}. A "
                             f"resume may change only {may}; for a new run choose another output_dir (or "
                             "overwrite=true)")
    check_same_data(cfg, recorded, fingerprint, notes)
    moved = []
    for folder in checkpoint_folders(out):
        problem = checkpoint_problem(folder)
        if problem:
            aside = set_aside(folder)
            moved.append({"checkpoint": folder.name, "moved_to": str(aside), "reason": problem})
            notes.append(f"{folder} is a torn checkpoint ({problem}): moved to {aside}")
    cut_log(out / TRAIN_LOG, marker["step"])
    # the loss summed over the steps before the checkpoint (None: a checkpoint saved before lavit recorded it)
    return {"resume": str(checkpoint), "set_aside": moved, "notes": notes, DATA_FINGERPRINT: fingerprint,
            "resumed_step": marker["step"], "loss_sum_before": marker.get(LOSS_SUM)}


def fit_batch_plan(plan: dict[str, int], rows: int) -> tuple[dict[str, int], str | None]:
    """The batch plan for a training set of `rows` rows: `plan` itself when it holds at least one global batch; else
    the largest global batch the rows fill (per-device batch, then accumulation cut down), with a note saying so — a
    plan the data cannot fill would train on smaller batches than the one recorded. Fewer rows than processes: an
    error."""
    world, asked = plan["world_size"], plan["global_batch_size"]
    if rows >= asked:
        return plan, None
    if rows < world:
        raise ValueError(f"the training set holds {rows} rows, fewer than the {world} processes of this run: every "
                         "process needs at least one sample per step")
    per_device = min(plan["per_device_batch_size"], rows // world)
    accumulation = rows // (per_device * world)
    fitted = {"world_size": world, "per_device_batch_size": per_device, "gradient_accumulation_steps": accumulation,
              "global_batch_size": per_device * accumulation * world}
    return fitted, (f"global_batch_size {asked} is more than the {rows} rows of the training set: each optimizer step "
                    f"takes {fitted['global_batch_size']} samples instead (per-device batch {per_device} × "
                    f"{accumulation} accumulation steps × {world} processes), recorded in train_results.json")


def whole_run_loss(session_loss: float, global_step: int, claim: dict) -> tuple[float | None, str]:
    """The mean training loss over every step of the run, a resumed one included (the Trainer's own covers only the
    steps of this session): the loss summed before the resumed checkpoint plus this session's, over all steps; and
    which steps it covers. A checkpoint that did not record its loss sum leaves only this session's mean."""
    before, resumed = claim["loss_sum_before"], claim["resumed_step"]
    if before is None:
        return session_loss, f"steps {resumed + 1}-{global_step} (the checkpoint resumed from recorded no loss sum)"
    return (before + session_loss * (global_step - resumed)) / max(global_step, 1), f"steps 1-{global_step}"


def run_training(cfg: LavitTrainConfig, callbacks: list | None = None, desc: str | None = None) -> dict:
    """Train, export the student to `output_dir/student`, write `output_dir/train_results.json`.

    The terminal shows one progress bar (`desc`, default the method); the log dicts go to
    `output_dir/train_log.jsonl`. `callbacks` are extra `TrainerCallback`s (e.g. diagnostics).
    """
    start = time.time()
    plan = cfg.batch_plan(world_size())
    with ExitStack() as held:
        # The main process claims the folder before anything slow (on a refusal it stops, and the launcher stops
        # the rest); the other ranks learn the outcome once the process group is up.
        claim = claim_output_dir(cfg, held) if is_main_process() else None
        for note in claim["notes"] if claim else []:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        return _train(cfg, plan, claim, callbacks, desc, start)


def _train(cfg: LavitTrainConfig, plan: dict[str, int], claim: dict | None, callbacks: list | None,
           desc: str | None, start: float) -> dict:
    set_seed(cfg.seed)
    table = read_sft_table(cfg.data, cfg.answer_field, need_signals=cfg.uses_latents, max_samples=cfg.max_samples,
                           need_kd=cfg.uses_teacher_topk)
    teacher_dim = len(table.column("v_sem")[0]) if cfg.uses_latents else None
    student, processor, names = build_student(cfg, teacher_dim)
    # gkd's teacher before the Trainer's arguments, as the student: a ZeRO-3 config they activate would partition it
    teacher = gkd_module().load_teacher(cfg, student, processor) if cfg.method == "gkd" else None
    dataset = LavitSftDataset(table, cfg.image_root, processor, names, system_prompt=cfg.system_prompt,
                              answer_field=cfg.answer_field, top_k=cfg.traj_top_k, with_signals=cfg.uses_latents,
                              bad_rows=cfg.bad_rows, max_text_tokens=cfg.max_text_tokens, kd=cfg.uses_teacher_topk)
    # the store keeps τ as float32: compare there, or a τ such as 0.7 would differ from itself
    if dataset.kd is not None and np.float32(dataset.kd.temperature) != np.float32(cfg.kd_temperature):
        raise ValueError(f"the teacher's top-k in the training data was stored at temperature "
                         f"{dataset.kd.temperature:g}, this run asks kd_temperature={cfg.kd_temperature:g}: a top-k "
                         "cannot be re-tempered exactly; train at the stored τ, or re-extract with that "
                         "kd_temperature")
    schedule = (GateSchedule(cfg.gate, cfg.gate_epsilon, cfg.gate_warmup_steps, cfg.gate_final) if cfg.uses_latents
                else GateSchedule("none"))
    plan, batch_note = fit_batch_plan(plan, len(dataset))
    if batch_note:
        warnings.warn(batch_note, RuntimeWarning, stacklevel=2)
    # TrainingArguments only after the student is built: a ZeRO-3 config it activates would partition the build
    args = training_arguments(cfg, plan)
    if args.world_size > 1:
        claim = broadcast_object_list([claim])[0]
    settings = {**run_settings(cfg), DATA_FINGERPRINT: claim[DATA_FINGERPRINT]}
    checkpointing = dict(run_settings=settings, keep_checkpoints=cfg.save_total_limit,
                         loss_sum_before=claim["loss_sum_before"] or 0.0)
    log = JsonlLogCallback(Path(cfg.output_dir) / TRAIN_LOG)
    if cfg.method == "gkd":
        trainer = gkd_module().gkd_trainer(student.model, teacher, dataset, processor, args,
                                           [log, *(callbacks or [])], **checkpointing)
    else:
        kd = KdObjective(cfg.kd_jsd_beta, cfg.kd_temperature, cfg.kd_ce_weight) if cfg.uses_teacher_topk else None
        trainer = LavitTrainer(
            model=student, args=args, train_dataset=dataset, processing_class=processor,
            data_collator=LavitCollator(processor.tokenizer.pad_token_id, cfg.gate_question_tokens, cfg.gate_readout),
            callbacks=[GammaCallback(schedule), log, *(callbacks or [])],
            lam=cfg.lam, read_weight=cfg.read_weight if cfg.uses_latents else 0.0, kd=kd, **checkpointing,
        )
    for printer in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(printer)
    trainer.add_callback(ProgressBarCallback(desc or f"train {cfg.method}"))
    if trainer.is_world_process_zero():  # from here on the folder holds this run
        write_json_atomic(settings, Path(cfg.output_dir) / RUN_SETTINGS)
        if dataset.dropped:
            warnings.warn(f"bad_rows=drop: {len(dataset.dropped)} of {len(dataset) + len(dataset.dropped)} rows left "
                          f"out, listed in {Path(cfg.output_dir) / DROPPED_ROWS}", RuntimeWarning, stacklevel=2)
            (Path(cfg.output_dir) / DROPPED_ROWS).write_text("".join(json.dumps(r) + "\n" for r in dataset.dropped))
    result = trainer.train(resume_from_checkpoint=claim["resume"])
    train_loss, loss_steps = whole_run_loss(result.training_loss, result.global_step, claim)
    export_dir = Path(cfg.output_dir) / "student"
    results = {
        "settings": config_to_dict(cfg),
        DATA_FINGERPRINT: claim[DATA_FINGERPRINT],
        **plan,
        **({"global_batch_size_asked": cfg.global_batch_size, "batch_adjusted": batch_note} if batch_note else {}),
        "train_loss": train_loss,
        "train_loss_steps": loss_steps,
        "global_step": result.global_step,
        "log_history": trainer.state.log_history,
        "student_dir": str(export_dir),
        "resumed_from": claim["resume"],
        "set_aside": claim["set_aside"],
        "dropped_rows": dict(Counter(r["reason"] for r in dataset.dropped)),
        **({"kd_alignment": dataset.kd_stats} if dataset.kd_stats is not None else {}),
        **(gkd_module().run_record(teacher) if cfg.method == "gkd" else {}),
        "wall_seconds": time.time() - start,
    }
    # Sharded engines gather the full weights through their own machinery (a collective: every rank calls it);
    # otherwise every rank holds the same weights. Either way one process writes.
    gathered = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.engine_checkpoints else None
    if gathered is not None and cfg.method == "gkd":  # TRL's trainer holds the bare model: keys as in `student`
        gathered = {f"model.{k}": v for k, v in gathered.items()}
    if trainer.is_world_process_zero():
        export_student(student, processor, export_dir, {"latent_tokens": names, "method": cfg.method,
                                                        "teacher_dim": teacher_dim, "system_prompt": cfg.system_prompt,
                                                        "min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels,
                                                        **({"inference_gate": cfg.inference_gate}
                                                           if cfg.inference_gate else {}),
                                                        **({"latent_design": "discrete"} if cfg.uses_latents else {}),
                                                        **(student.latent_feedback.to_meta()
                                                           if student.latent_feedback else {})},
                       state_dict=gathered)
        (Path(cfg.output_dir) / RESULTS).write_text(json.dumps(results, indent=2))
    trainer.accelerator.wait_for_everyone()  # no rank returns before the export exists
    return results

"""`lavit train`: one LaViT (or Naive-SFT) student training run, as a plain function.

    lavit train recipes/lavit_qwen2_5_vl_3b.yaml data=DIR image_root=DIR output_dir=runs/lavit
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch
from transformers import PrinterCallback, ProgressCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from lavit.config import config_to_dict
from lavit.data.collator import LavitCollator
from lavit.data.sft_dataset import LavitSftDataset, read_sft_table
from lavit.models.checkpoint import export_student, load_model_and_processor
from lavit.models.gating import GateSchedule
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.families import family_of
from lavit.models.projection_head import ProjectionHead
from lavit.training.callbacks import TRAIN_LOG, JsonlLogCallback, ProgressBarCallback
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.lavit_trainer import GammaCallback, LavitTrainer

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def build_student(cfg: LavitTrainConfig, teacher_dim: int | None):
    """Model + processor + latent tokens + projection head, frozen and wrapped as `cfg` says."""
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
    if cfg.freeze_vision:
        family_of(model).vision_tower(model).requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False
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
    student = LavitStudent(model, latent_ids, head, trajectory_loss=cfg.uses_latents and cfg.trajectory_loss)
    return student, processor, names


def world_size() -> int:
    """Processes in this run, as torchrun / accelerate launch announce them (1 when launched plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(cfg: LavitTrainConfig, plan: dict[str, int]) -> TrainingArguments:
    bf16 = cfg.precision in ("bf16", "bf16_pure") or (cfg.precision == "auto" and torch.cuda.is_available())
    return TrainingArguments(
        output_dir=cfg.output_dir, max_steps=cfg.max_steps, per_device_train_batch_size=plan["per_device_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"], learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit or None, seed=cfg.seed, data_seed=cfg.seed, bf16=bf16,
        remove_unused_columns=False, report_to="none", dataloader_num_workers=cfg.dataloader_num_workers,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
    )


def run_training(cfg: LavitTrainConfig, callbacks: list | None = None, desc: str | None = None) -> dict:
    """Train, export the student to `output_dir/student`, write `output_dir/train_results.json`.

    The terminal shows one progress bar (`desc`, default the method); the log dicts go to
    `output_dir/train_log.jsonl`. `callbacks` are extra `TrainerCallback`s (e.g. diagnostics).
    """
    start = time.time()
    plan = cfg.batch_plan(world_size())
    set_seed(cfg.seed)
    table = read_sft_table(cfg.data, cfg.answer_field, need_signals=cfg.uses_latents, max_samples=cfg.max_samples)
    teacher_dim = len(table.column("v_sem")[0]) if cfg.uses_latents else None
    student, processor, names = build_student(cfg, teacher_dim)
    dataset = LavitSftDataset(table, cfg.image_root, processor, names, system_prompt=cfg.system_prompt,
                              answer_field=cfg.answer_field, top_k=cfg.traj_top_k, with_signals=cfg.uses_latents)
    schedule = GateSchedule(cfg.gate if cfg.uses_latents else "none", cfg.gate_epsilon, cfg.gate_warmup_steps)
    trainer = LavitTrainer(
        model=student, args=training_arguments(cfg, plan), train_dataset=dataset, processing_class=processor,
        data_collator=LavitCollator(processor.tokenizer.pad_token_id, cfg.gate_question_tokens),
        callbacks=[GammaCallback(schedule), JsonlLogCallback(Path(cfg.output_dir) / TRAIN_LOG), *(callbacks or [])],
        lam=cfg.lam,
    )
    for printer in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(printer)
    trainer.add_callback(ProgressBarCallback(desc or f"train {cfg.method}"))
    resume = cfg.resume or None
    if resume == "latest":
        resume = get_last_checkpoint(cfg.output_dir)
        if resume is None:
            raise FileNotFoundError(f"resume=latest but {cfg.output_dir} holds no checkpoint")
    result = trainer.train(resume_from_checkpoint=resume)
    export_dir = Path(cfg.output_dir) / "student"
    results = {
        "settings": config_to_dict(cfg),
        **plan,
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "log_history": trainer.state.log_history,
        "student_dir": str(export_dir),
        "wall_seconds": time.time() - start,
    }
    # Sharded engines gather the full weights through their own machinery (a collective: every rank calls it);
    # otherwise every rank holds the same weights. Either way one process writes.
    gathered = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.engine_checkpoints else None
    if trainer.is_world_process_zero():
        export_student(student, processor, export_dir, {"latent_tokens": names, "method": cfg.method,
                                                        "teacher_dim": teacher_dim, "system_prompt": cfg.system_prompt,
                                                        "min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels},
                       state_dict=gathered)
        (Path(cfg.output_dir) / "train_results.json").write_text(json.dumps(results, indent=2))
    trainer.accelerator.wait_for_everyone()  # no rank returns before the export exists
    return results

"""Settings of `lavit train`. Defaults are the paper's Table A1 recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lavit.config import field
from lavit.data.examples import LAVIT_SYSTEM_PROMPT
from lavit.data.samples import DEFAULT_MAX_TEXT_TOKENS
from lavit.models.attention import GATE_ATTENTION, GateAttention
from lavit.models.checkpoint import TINY
from lavit.models.grid import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS
from lavit.models.latent_tokens import DEFAULT_LATENT_TEMPLATE

# Settings a resumed run may change: where and how often it writes, and memory/speed knobs that leave every
# step's numbers as they were. Any other difference from the checkpoint's run refuses the resume.
MAY_CHANGE_ON_RESUME = ("output_dir", "resume", "overwrite", "save_steps", "logging_steps", "save_total_limit",
                        "dataloader_num_workers", "per_device_batch_size", "gradient_checkpointing",
                        "gate_attention")  # the same numbers by another kernel (the FlexAttention gate = the dense one)


@dataclass
class LavitTrainConfig:
    # what to train
    model: str = field(TINY, "Student to start from: a Hugging Face path or id of a Qwen2-VL, Qwen2.5-VL, Qwen3-VL "
                       "or Qwen3.5 model (e.g. Qwen/Qwen2.5-VL-3B-Instruct), or 'tiny' / 'tiny:FAMILY' (e.g. "
                       "tiny:qwen3_vl) for a built-in tiny student (tests, CPU).")
    method: Literal["lavit", "naive_sft", "kd", "gkd", "lavit_kd"] = field(
        "lavit", "'lavit': latent tokens, gating and both distillation losses; 'naive_sft': same data and recipe, text "
        "loss only, no latents. Distillation baselines (beyond the paper): 'kd': off-policy knowledge distillation, "
        "the teacher's next-token distribution on its own answer tokens (its top-k, stored by `lavit extract "
        "kd_top_k=k`) as the target, no latents; 'gkd': on-policy distillation (the student samples answers, the "
        "teacher= model scores them; TRL's DistillationTrainer, needs `pip install lavit[kd]`); 'lavit_kd': lavit "
        "with its L_ntp on the answer tokens replaced by the kd term (latents, gate, L_concept and L_traj kept).")
    data: list[str] = field([], "LaViT-SFT Parquet files or directories of shards.")
    image_root: str = field("", "Directory the samples' relative image paths start from.")
    output_dir: str = field("runs/lavit", "Where checkpoints, the exported student and JSON results go. One run "
                            "per folder: a folder holding another run is refused unless resume= or overwrite=true, "
                            "and one in use by a running `lavit train` is refused (output_dir/lavit.lock).")
    answer_field: str = field("answer", "Column holding the answer to train on ('answer' = ground truth, or "
                              "'teacher_answer').")
    max_samples: int = field(0, "Use only the first N samples (0 = all).")
    bad_rows: Literal["error", "drop"] = field("error", "Rows that cannot be trained on, all found before the first "
                                               "step (empty question, missing or empty answer, a special token of "
                                               "the student's tokenizer such as <|image_pad|> in question or answer, "
                                               "question or answer over max_text_tokens, image missing, outside "
                                               "image_root or not decoding, missing teacher signal): 'error' stops "
                                               "and lists them; 'drop' trains on the rest and records each in "
                                               "output_dir/dropped_rows.jsonl (counts by reason in "
                                               "train_results.json).")
    max_text_tokens: int = field(DEFAULT_MAX_TEXT_TOKENS, "Longest question or answer, in the student's tokens, a "
                                 "row may have (0 = no limit): a longer one is a bad row (text_too_long, see "
                                 "bad_rows), so one row cannot fill the memory of its batch.")
    # the method (paper §4.2)
    num_latent_tokens: int = field(4, "K, the number of latent tokens <lvr_1>..<lvr_K> (paper: 4).")
    latent_token_template: str = field(DEFAULT_LATENT_TEMPLATE, "Name pattern of the latent tokens; {i} counts from 1.")
    trajectory_loss: bool = field(True, "Use L_traj (eq. 7); false = the 'w/o trajectory alignment' ablation.")
    concept_loss: bool = field(True, "Use L_concept (eq. 6); false = the 'w/o semantic reconstruction' ablation.")
    lam: float = field(0.3, "λ in L_total = L_ntp + λ (L_concept + L_traj) (eq. 9).")
    traj_top_k: int = field(8, "Keep the k strongest teacher attention entries in the L_traj target (0 = all).")
    gate: Literal["cosine", "hard", "none"] = field("cosine", "Sensory gate: cosine (eq. 5), hard (γ=0 then 1, "
                                                    "'w/o curriculum gate'), none (γ≡1, 'single stage').")
    gate_epsilon: float = field(1e-6, "ε, the gate's starting γ.")
    gate_warmup_steps: int = field(400, "T_w, steps until the gate is fully open.")
    gate_question_tokens: bool = field(True, "Also gate the question tokens between image and latents (closes a "
                                       "leak: otherwise answers can read the image through question states).")
    gate_readout: bool = field(False, "Also gate the readout, the last latent token (beyond the paper): it predicts "
                               "the answer's first token, so with one-token answers (option letters) the paper's "
                               "gate never reaches the prediction. Needs K >= 2; L_traj then maps latents 1..K-1.")
    gate_final: float = field(1.0, "γ after warm-up, kept at inference (beyond the paper; the paper opens the gate "
                              "fully: 1). Below 1 the answer never fully sees the image (0 = vision only through "
                              "the latents): the export then needs lavit's own generation (lavit eval, lavit "
                              "audit), not stock clients. With gate=none, γ ≡ gate_final from step 0.")
    gate_attention: GateAttention = field(
        "auto", "How the gate (γ < 1) reaches the softmax layers: 'dense' = an additive [B, 1, S, S] float mask "
        "through SDPA (which then cannot use its flash kernel); 'flex' = FlexAttention, causal + padding as a block "
        "mask and ln γ as a score_mod (compiled once: a new γ each step does not recompile; needs CUDA for training, "
        "torch has no FlexAttention backward on a CPU); 'auto' = flex on CUDA, dense elsewhere. Both give the same "
        "numbers to float rounding.")
    read_weight: float = field(0.0, "Weight of L_read (beyond the paper): -log of the readout's attention mass on "
                               "latents 1..K-1, rewarding an answer that reads the latent block. Needs K >= 2.")
    latent_design: Literal["discrete", "continuous"] = field(
        "discrete", "Latent design (beyond the paper): 'discrete' = the paper's K latent tokens; 'continuous' = latent "
        "i+1's input embedding is latent i's final hidden state, after the final norm (Coconut, LVR, Monet): K-1 "
        "extra forward passes per step, backpropagated through; latent 1 keeps its token embedding, latents 1..K-1 "
        "predict no token, and only lavit's generation runs the export (lavit eval, lavit audit; not vLLM or other "
        "stock clients). Needs a latent method and K >= 2.")
    latent_norm_match: Literal["none", "embedding_table"] = field(
        "none", "Continuous latents only: 'none' feeds the final states back as they are (Coconut); 'embedding_table' "
        "rescales every fed-back state to the mean L2 norm of the student's input-embedding rows, measured when "
        "training starts and recorded in lavit.json (GAP-style: final states are far larger in norm than input "
        "embeddings).")
    # the distillation baselines (beyond the paper): method=kd, lavit_kd, gkd
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = field(
        "forward_kl", "kd / lavit_kd / gkd: the divergence of the student's next-token distribution q from the "
        "teacher's p: forward KL(p‖q) (Hinton et al. 2015), reverse KL(q‖p), or GKD's generalised JSD with β = "
        "kd_beta (Agarwal et al. 2024; forward and reverse KL are its β = 0 and 1 limits, as in TRL). kd / lavit_kd "
        "take it on the partition {the teacher's stored top-k tokens…, everything else}, gkd over the whole "
        "vocabulary.")
    kd_beta: float = field(0.5, "kd_loss=jsd: β in β KL(p‖m) + (1 − β) KL(q‖m), m = β p + (1 − β) q; in (0, 1) "
                           "(GKD's and TRL's GKD default: 0.5).")
    kd_temperature: float = field(1.0, "τ. kd / lavit_kd: both distributions at τ (student: softmax(logits / τ)); "
                                  "it must be the τ the teacher's top-k was stored at (`lavit extract "
                                  "kd_temperature`: a top-k cannot be re-tempered exactly), another is refused. gkd: "
                                  "TRL's sampling and divergence temperature.")
    kd_ce_weight: float = field(0.0, "kd / lavit_kd: w in D_t + w·CE_t per answer token, the cross-entropy on the "
                                "teacher's answer token kept beside the distillation term D_t. 0 = pure distribution "
                                "matching, GKD's supervised-KD baseline and the clean contrast with naive_sft (same "
                                "tokens, one-hot targets); Hinton et al. 2015 add a small hard-target weight.")
    teacher: str = field("", "gkd: the teacher that scores the student's samples, loaded beside it for the whole run: "
                         "a Hugging Face path or id with the student's tokenizer (e.g. Qwen/Qwen2.5-VL-32B-Instruct "
                         "for a Qwen2.5-VL-3B student), a toy teacher's folder, or 'tiny-teacher'.")
    gkd_max_new_tokens: int = field(128, "gkd: longest answer the student samples (TRL's max_completion_length).")
    system_prompt: str = field(LAVIT_SYSTEM_PROMPT, "System prompt (paper C.3); empty = the template's default.")
    # optimisation (Table A1)
    learning_rate: float = field(5e-6, "Peak learning rate (AdamW).")
    lr_scheduler_type: str = field("linear", "Learning-rate schedule after warmup.")
    warmup_ratio: float = field(0.03, "Fraction of steps spent warming the learning rate up.")
    weight_decay: float = field(0.0, "AdamW weight decay.")
    adam_beta1: float = field(0.9, "AdamW β1.")
    adam_beta2: float = field(0.999, "AdamW β2.")
    max_grad_norm: float = field(1.0, "Gradient clipping norm.")
    max_steps: int = field(1000, "Optimizer steps to train.")
    global_batch_size: int = field(16, "Samples per optimizer step over all processes (paper Table A1: 16). "
                                   "Per-device batch × accumulation × world size must equal it.")
    per_device_batch_size: int = field(0, "Samples per forward pass on each process; 0 = global_batch_size / world "
                                       "size (no accumulation). Accumulation steps are derived from it.")
    freeze_vision: bool = field(True, "Keep the ViT encoder (and merger) frozen.")
    gradient_checkpointing: bool = field(True, "Recompute activations in backward to save memory.")
    precision: Literal["auto", "bf16", "fp32", "bf16_pure"] = field(
        "auto", "bf16 = fp32 master weights under bf16 autocast (or the engine's bf16 policy under FSDP/DeepSpeed); "
        "auto = bf16 on GPU, fp32 on CPU; fp32 = no autocast; bf16_pure = bf16 weights under plain AdamW, which "
        "rounds away most updates at small learning rates (warns).")
    lora_r: int = field(0, "LoRA rank for the language model's linear layers (0 = full fine-tuning).")
    lora_alpha: int = field(16, "LoRA α.")
    min_pixels: int = field(PAPER_MIN_PIXELS, "Image processor min pixels (Table A1).")
    max_pixels: int = field(PAPER_MAX_PIXELS, "Image processor max pixels (Table A1).")
    # bookkeeping
    seed: int = field(42, "Seed for initialisation, data order and everything else random.")
    logging_steps: int = field(10, "Log the loss terms every N steps.")
    save_steps: int = field(200, "Checkpoint every N steps (resumable with resume=...).")
    save_total_limit: int = field(0, "Keep at most N complete checkpoints (0 = all); older ones are deleted only "
                                  "once a new one is complete.")
    resume: str = field("", "Resume from this checkpoint directory, or 'latest' for the newest complete one in "
                        "output_dir (a checkpoint torn by a kill is reported and moved to output_dir/torn/). "
                        "Every other setting must equal the checkpoint's run (data, image_root and model paths "
                        "compared resolved) except "
                        + ", ".join(k for k in MAY_CHANGE_ON_RESUME if k not in ("resume", "overwrite"))
                        + "; a difference "
                        "refuses the resume and lists it.")
    overwrite: bool = field(False, "Start over in an output_dir holding another run: its checkpoints, logs, "
                            "results and export are deleted first (other files are left alone).")
    dataloader_num_workers: int = field(0, "Data loading worker processes.")

    def __post_init__(self) -> None:
        checks = [
            (self.num_latent_tokens >= 1, "num_latent_tokens must be >= 1"),
            ("{i}" in self.latent_token_template, "latent_token_template must contain {i}"),
            (self.lam >= 0, "lam must be >= 0"),
            (self.traj_top_k >= 0, "traj_top_k must be >= 0"),
            (0 < self.gate_epsilon < 1, "gate_epsilon must be in (0, 1)"),
            (self.gate_warmup_steps >= 0, "gate_warmup_steps must be >= 0"),
            (0 <= self.gate_final <= 1, "gate_final must be in [0, 1]"),
            (self.gate_attention in GATE_ATTENTION, "gate_attention must be auto, dense or flex"),
            (self.read_weight >= 0, "read_weight must be >= 0"),
            (not (self.uses_latents and (self.gate_readout or self.read_weight > 0)) or self.num_latent_tokens >= 2,
             "gate_readout and read_weight need num_latent_tokens >= 2 (latents 1..K-1 before the readout)"),
            (self.latent_design in ("discrete", "continuous"), "latent_design must be discrete or continuous"),
            (self.latent_norm_match in ("none", "embedding_table"), "latent_norm_match must be none or embedding_table"),
            (self.latent_design == "discrete" or self.uses_latents,
             f"latent_design=continuous needs a method with latent tokens, not method={self.method}"),
            (self.latent_design == "discrete" or self.num_latent_tokens >= 2,
             "latent_design=continuous needs num_latent_tokens >= 2 (latent 1 feeds latent 2)"),
            (self.kd_loss != "jsd" or 0 < self.kd_beta < 1, "kd_beta must be in (0, 1) (forward_kl and reverse_kl "
             "are its limits 0 and 1)"),
            (self.kd_temperature > 0, "kd_temperature must be > 0"),
            (self.kd_ce_weight >= 0, "kd_ce_weight must be >= 0"),
            (self.gkd_max_new_tokens >= 1, "gkd_max_new_tokens must be >= 1"),
            (self.method != "gkd" or bool(self.teacher), "method=gkd needs teacher= (the model that scores the "
             "student's samples, e.g. the teacher that extracted the data)"),
            (self.method == "gkd" or not self.teacher, f"teacher= is method=gkd's (the on-policy scorer); "
             f"method={self.method} reads the teacher's signals from the data"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.max_steps > 0, "max_steps must be > 0"),
            (self.global_batch_size > 0, "global_batch_size must be > 0"),
            (self.per_device_batch_size >= 0, "per_device_batch_size must be >= 0"),
            (self.lora_r >= 0, "lora_r must be >= 0"),
            (0 < self.min_pixels <= self.max_pixels, "need 0 < min_pixels <= max_pixels"),
            (self.logging_steps > 0 and self.save_steps > 0, "logging_steps and save_steps must be > 0"),
            (self.max_samples >= 0, "max_samples must be >= 0"),
            (self.max_text_tokens >= 0, "max_text_tokens must be >= 0 (0 = no limit)"),
            (not (self.overwrite and self.resume), "overwrite=true deletes the run that resume= continues; "
             "set one of them"),
            (not self.uses_latents or self.gate == "none" or self.gate_warmup_steps < self.max_steps,
             f"gate_warmup_steps ({self.gate_warmup_steps}) must be below max_steps ({self.max_steps}): otherwise the "
             "gate never reaches its final γ during training and the exported student (run at gate_final) meets "
             "attention it was never trained on; lower gate_warmup_steps or set gate=none"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def uses_latents(self) -> bool:
        return self.method in ("lavit", "lavit_kd")

    @property
    def uses_teacher_topk(self) -> bool:
        """kd and lavit_kd train on the teacher's stored top-k."""
        return self.method in ("kd", "lavit_kd")

    @property
    def kd_jsd_beta(self) -> float:
        """β of the generalised JSD that `kd_loss` names (0: forward KL, 1: reverse KL)."""
        return {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": self.kd_beta}[self.kd_loss]

    @property
    def inference_gate(self) -> dict | None:
        """What the export records for lavit's generation to keep applying (lavit.json), or None (stock)."""
        if not self.uses_latents or self.gate_final >= 1.0:
            return None
        return {"gamma": self.gate_final, "question_tokens": self.gate_question_tokens, "readout": self.gate_readout}

    def batch_plan(self, world_size: int) -> dict[str, int]:
        """Per-device batch and accumulation steps that make `global_batch_size` on `world_size` processes."""
        per_device = self.per_device_batch_size or self.global_batch_size // world_size
        if per_device < 1 or self.global_batch_size % (per_device * world_size):
            raise ValueError(f"global_batch_size {self.global_batch_size} is not per_device_batch_size "
                             f"{per_device or self.per_device_batch_size} × accumulation steps × {world_size} "
                             "processes for any whole number of steps; choose sizes that divide")
        return {"world_size": world_size, "per_device_batch_size": per_device,
                "gradient_accumulation_steps": self.global_batch_size // (per_device * world_size),
                "global_batch_size": self.global_batch_size}

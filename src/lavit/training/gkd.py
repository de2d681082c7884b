"""`lavit train method=gkd`: on-policy distillation (GKD, Agarwal et al. 2024) through TRL's `DistillationTrainer`.

    lavit train recipes/naive_sft_qwen2_5_vl_3b.yaml method=gkd teacher=Qwen/Qwen2.5-VL-32B-Instruct data=DIR ...

Each step the student samples an answer to each row's image and question (`kd_temperature`, at most
`gkd_max_new_tokens` tokens), the teacher scores that same sequence with the image, and the loss is the token-level
generalised JSD between the two next-token distributions over the whole vocabulary on the sampled tokens (`kd_loss`:
β = 0 forward KL, 1 reverse KL, else `kd_beta`), TRL's chunked kernel. Rows are the same checked rows as every other
method's (`LavitSftDataset`); their answers are not used. The run goes through `lavit train` like the others: one
run per output folder, complete-checkpoint markers and rotation (`CompleteCheckpoints`), the export to
`output_dir/student` with lavit.json, `train_results.json`.

What TRL 1.16 gives, and what it does not:
- Fully on-policy (GKD's λ = 1). Its `DistillationTrainer` has no λ, GKD's mixture with fixed (off-policy) answers;
  the experimental `GKDTrainer`, which has one, feeds both models `input_ids` and `attention_mask` only (no pixel
  values), so it cannot distil a vision-language model. The off-policy end, λ = 0, is method=kd.
- One vocabulary. Teacher and student must share the tokenizer (checked here, string by string) and TRL compares the
  heads' row counts. Qwen2.5-VL-32B's head has 152064 rows, 3B's 151936, both past the 151665-token tokenizer: the
  teacher's rows past the student's head (ids no tokenizer produces) are cut off before training, counted in
  train_results.json (`gkd_teacher_head_rows_dropped`); the probability the teacher put on them is not measured.
- The teacher reads the student's processor output (one image resolution for both: the student's min/max_pixels).
- Seeded: TRL seeds its sampler and sampling from `seed`. Resume: the checkpoint (the student's state under its own
  names, optimizer, scheduler, RNG) restores the run at the checkpoint; the data order is the uninterrupted run's
  (`EpochSeededSampler`) and the answers sampled after a resume come from the restored RNG state — the losses equal
  the uninterrupted run's on CPU (tested), where sampling is deterministic; not checked on GPU, whose sampling
  kernels need not be.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import trl
from torch import nn
from trl import DistillationConfig, DistillationTrainer

from lavit.data.sft_dataset import LavitSftDataset
from lavit.models.checkpoint import default_dtype, load_model_and_processor
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.lavit_trainer import CompleteCheckpoints

TEACHER_ROWS_DROPPED = "gkd_teacher_head_rows_dropped"


class EpochSeededSampler(torch.utils.data.Sampler):
    """TRL's `RepeatSampler` with each epoch's order drawn from (seed, epoch) alone, as the Trainer's own sampler
    draws it. TRL's draws every epoch's order from one generator that runs on across epochs; a resumed run builds it
    afresh, so past the first epoch it would train on another order than the uninterrupted run. The Trainer calls
    `set_epoch` before each epoch, a resumed one included."""

    def __init__(self, sampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        if self.sampler.shuffle:
            self.sampler.generator.manual_seed(self.sampler.seed + epoch)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class GkdTrainer(CompleteCheckpoints, DistillationTrainer):
    """TRL's on-policy distillation trainer with lavit's checkpoint markers and rotation, and a data order a resume
    reproduces (`EpochSeededSampler`)."""

    def _get_train_sampler(self, dataset=None):
        return EpochSeededSampler(super()._get_train_sampler(dataset))

    def create_model_card(self, *args, **kwargs) -> None:
        """Write no model card: TRL writes one into output_dir at every checkpoint, and a lavit run folder holds the
        same entries whatever the method (the export's lavit.json and train_results.json describe the run)."""


@dataclass
class GkdTeacher:
    model: nn.Module  # frozen, its head fitted to the student's
    rows_dropped: int  # the head rows `fit_teacher_head` cut


class PromptSet(torch.utils.data.Dataset):
    """The checked rows of a `LavitSftDataset` as TRL's conversational prompts: the system prompt (if any), then the
    user turn — the image, then the question (TRL puts the image first, as `build_example`'s layout does)."""

    def __init__(self, rows: LavitSftDataset):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        sample = self.rows.sample(index)
        system = [{"role": "system", "content": self.rows.system_prompt}] if self.rows.system_prompt else []
        return {"prompt": [*system, {"role": "user", "content": sample.question}], "image": sample.image}


def distillation_arguments(cfg: LavitTrainConfig, values: dict) -> DistillationConfig:
    """TRL's arguments: the Trainer's `values` as for every method, plus the divergence, temperature and sampling
    length (top-k / top-p sampling off: the student's own distribution at τ is what GKD samples)."""
    return DistillationConfig(**values, beta=cfg.kd_jsd_beta, temperature=cfg.kd_temperature,
                              max_completion_length=cfg.gkd_max_new_tokens, top_k=0, top_p=1.0,
                              gradient_checkpointing=cfg.gradient_checkpointing,
                              gradient_checkpointing_kwargs={"use_reentrant": False})


def check_shared_vocabulary(student_tokenizer, teacher_tokenizer) -> None:
    """Refuse a teacher whose tokenizer is not the student's (same token strings, same ids): GKD compares the two
    full next-token distributions id by id."""
    student, teacher = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student != teacher:
        differ = sorted(t for t in set(student) | set(teacher) if student.get(t) != teacher.get(t))
        raise ValueError(f"method=gkd needs the teacher to share the student's tokenizer: {len(differ)} token strings "
                         f"differ (e.g. {differ[:5]}; student {len(student)} tokens, teacher {len(teacher)}). "
                         "method=kd distils across tokenizers (the teacher's stored top-k mapped string by string)")


def fit_teacher_head(teacher: nn.Module, student_rows: int, tokenizer_size: int) -> int:
    """Cut the teacher's output rows to the student's `student_rows` when the rows cut are past both tokenizers
    (`tokenizer_size` ids): they are padding no token reaches. Returns how many rows were cut; refuses a teacher head
    smaller than the student's, or a cut that would remove a token."""
    head = teacher.get_output_embeddings()
    rows = head.weight.shape[0]
    if rows == student_rows:
        return 0
    if rows < student_rows or student_rows < tokenizer_size:
        raise ValueError(f"the teacher's head has {rows} rows, the student's {student_rows}, the tokenizer "
                         f"{tokenizer_size} tokens: the distributions cannot be compared id by id")
    cut = nn.Linear(head.in_features, student_rows, bias=head.bias is not None, device=head.weight.device,
                    dtype=head.weight.dtype)
    cut.weight = nn.Parameter(head.weight.detach()[:student_rows].clone(), requires_grad=False)
    if head.bias is not None:
        cut.bias = nn.Parameter(head.bias.detach()[:student_rows].clone(), requires_grad=False)
    teacher.set_output_embeddings(cut)
    teacher.config.get_text_config().vocab_size = student_rows  # what TRL compares
    return rows - student_rows


def load_teacher(cfg: LavitTrainConfig, student, processor) -> GkdTeacher:
    """The frozen teacher (bf16 on GPU, fp32 on CPU), its tokenizer checked against the student's and its head
    fitted to the student's (`fit_teacher_head`)."""
    teacher, teacher_processor = load_model_and_processor(cfg.teacher, dtype=default_dtype(), seed=cfg.seed,
                                                          min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    check_shared_vocabulary(processor.tokenizer, teacher_processor.tokenizer)
    student_rows = student.hf_model.get_output_embeddings().weight.shape[0]
    dropped = fit_teacher_head(teacher, student_rows, len(processor.tokenizer))
    return GkdTeacher(teacher.requires_grad_(False).eval(), dropped)


def gkd_trainer(model: nn.Module, teacher: GkdTeacher, rows: LavitSftDataset, processor, args: DistillationConfig,
                callbacks: list, **checkpointing) -> GkdTrainer:
    """TRL's trainer over `rows` (the student `model` is the bare Hugging Face model, or its LoRA wrapper)."""
    return GkdTrainer(model=model, teacher_model=teacher.model, args=args, train_dataset=PromptSet(rows),
                      processing_class=processor, callbacks=callbacks, **checkpointing)


def run_record(teacher: GkdTeacher) -> dict:
    """What train_results.json records of a gkd run beyond every method's fields."""
    return {TEACHER_ROWS_DROPPED: teacher.rows_dropped, "trl_version": trl.__version__}

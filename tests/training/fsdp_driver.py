"""Run by test_distributed.py: a LaViT student sharded with FSDP2 (`fully_shard`, gloo, 2 CPU processes).

    torchrun --standalone --nproc_per_node 2 tests/training/fsdp_driver.py OUT DATA full|resume

accelerate's FSDP plugin refuses CPU, so this drives the same pieces a GPU `lavit train` under FSDP2 runs,
one level down: the student with its latent probe, gate and fp32 projection head, sharded per decoder layer
and at the root; its model + optimizer state saved and loaded through torch's distributed checkpoint (the
calls accelerate's FSDP2 checkpointing makes); the full state gathered as accelerate's `get_state_dict`
gathers it; and `export_student` writing from that gathered state on rank 0.

`full` trains STEPS steps, saving a checkpoint after SAVE_AT, and exports; `resume` starts from that
checkpoint and trains the remaining steps. Each rank records its losses and the files it wrote under
OUT/ranks/; rank 0 also writes the gathered state to OUT/gathered.safetensors for comparison.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ddp_driver import spy_on_writes
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from transformers import set_seed

from lavit.data.collator import LavitCollator
from lavit.data.sft_dataset import LavitSftDataset, read_sft_table
from lavit.models.checkpoint import export_student
from lavit.models.gating import GateSchedule
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.lavit_trainer import student_loss
from lavit.training.train import build_student

STEPS, SAVE_AT, GLOBAL_BATCH = 4, 2, 4


def main() -> None:
    out, data, mode = sys.argv[1:]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir = (Path(out) / "run").resolve()
    cfg = LavitTrainConfig(data=[data], image_root=str(Path(data).parent), output_dir=str(run_dir), learning_rate=1e-3,
                           gate_warmup_steps=SAVE_AT + 1, max_steps=STEPS, global_batch_size=GLOBAL_BATCH,
                           min_pixels=3136, max_pixels=50176, gradient_checkpointing=False)
    set_seed(cfg.seed)
    table = read_sft_table(cfg.data, cfg.answer_field, need_signals=True)
    teacher_dim = len(table.column("v_sem")[0])
    student, processor, names = build_student(cfg, teacher_dim)
    dataset = LavitSftDataset(table, cfg.image_root, processor, names, system_prompt=cfg.system_prompt,
                              answer_field=cfg.answer_field, top_k=cfg.traj_top_k)
    collate = LavitCollator(processor.tokenizer.pad_token_id, cfg.gate_question_tokens)
    schedule = GateSchedule(cfg.gate, cfg.gate_epsilon, cfg.gate_warmup_steps)
    for layer in student.hf_model.model.language_model.layers:
        fully_shard(layer)
    fully_shard(student)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.learning_rate)
    written: list[str] = []
    spy_on_writes(run_dir, written)
    checkpoint = run_dir / f"checkpoint-{SAVE_AT}"

    start = 0
    if mode == "resume":
        model_state, optim_state = get_state_dict(student, optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(checkpoint))
        set_state_dict(student, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        start = SAVE_AT
    losses = []
    for step in range(start, STEPS):
        student.gamma = schedule.gamma(step)
        # each rank takes its share of the step's global batch, as a distributed sampler would
        batch = collate([dataset[(step * GLOBAL_BATCH + i) % len(dataset)] for i in range(rank, GLOBAL_BATCH, world)])
        loss, _ = student_loss(student(batch), batch, cfg.lam)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        if mode == "full" and step + 1 == SAVE_AT:
            model_state, optim_state = get_state_dict(student, optimizer)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(checkpoint))

    gathered = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if mode == "full" and rank == 0:
        export_student(student, processor, run_dir / "student", {"latent_tokens": names, "method": cfg.method,
                                                                  "teacher_dim": teacher_dim, "system_prompt": ""},
                       state_dict=gathered)
        save_file({k: v.clone().contiguous() for k, v in gathered.items()}, Path(out) / "gathered.safetensors")
    dist.barrier()
    ranks = Path(out) / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    (ranks / f"{mode}-rank{rank}.json").write_text(json.dumps({
        "rank": rank, "losses": losses, "written": sorted(set(written)), "gathered_keys": len(gathered),
        "sharded": type(student).__name__}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

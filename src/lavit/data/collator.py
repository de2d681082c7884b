"""Batches of examples with different image sizes and sequence lengths."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from lavit.data.examples import IGNORE_INDEX
from lavit.models.gating import gated_query_mask


@dataclass
class LavitCollator:
    """Right-pads a list of `build_example` dicts and records, per example, where the image tokens,
    the latent tokens and the gated queries are.

    Output (B examples, S = longest sequence, N = most image tokens, K latent tokens):
    input_ids/labels/attention_mask/mm_token_type_ids [B, S]; pixel_values [sum patches, C*T*P*P];
    image_grid_thw [B, 3]; image_mask/latent_mask/gate_query_mask [B, S]; latent_positions [B, K];
    image_index/image_valid [B, N]; v_sem [B, D_teacher] and traj_target [B, N] when present; the teacher's top-k
    when present (method=kd, lavit_kd), right-padded over T = most answer positions: kd_ids [B, T, k] (−1 also on
    padding), kd_logprobs [B, T, k], kd_mask [B, T] (the real positions).
    """

    pad_token_id: int
    gate_question_tokens: bool = True
    gate_readout: bool = False

    def __call__(self, examples: list[dict]) -> dict:
        ks = {int(e["latent_positions"].numel()) for e in examples}
        if len(ks) != 1:
            raise ValueError(f"examples in one batch have different numbers of latent tokens: {sorted(ks)}")
        input_ids = pad_sequence([e["input_ids"] for e in examples], batch_first=True, padding_value=self.pad_token_id)
        bsz, seq = input_ids.shape
        attention_mask = pad_sequence([torch.ones_like(e["input_ids"]) for e in examples], batch_first=True)
        batch = {
            "ids": [e["id"] for e in examples],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": pad_sequence([e["labels"] for e in examples], batch_first=True, padding_value=IGNORE_INDEX),
            "mm_token_type_ids": pad_sequence([e["mm_token_type_ids"] for e in examples], batch_first=True),
            "pixel_values": torch.cat([e["pixel_values"] for e in examples]),
            "image_grid_thw": torch.cat([e["image_grid_thw"] for e in examples]),
            "latent_positions": torch.stack([e["latent_positions"] for e in examples]),
        }
        image_index = pad_sequence([e["image_positions"] for e in examples], batch_first=True)  # [B, N]
        image_valid = pad_sequence([torch.ones_like(e["image_positions"], dtype=torch.bool) for e in examples],
                                   batch_first=True)  # [B, N]
        image_mask = torch.zeros(bsz, seq, dtype=torch.bool)
        image_mask[torch.arange(bsz)[:, None].expand_as(image_index)[image_valid], image_index[image_valid]] = True
        latent_mask = torch.zeros(bsz, seq, dtype=torch.bool)
        latent_mask.scatter_(1, batch["latent_positions"], True)
        batch.update(image_index=image_index, image_valid=image_valid, image_mask=image_mask, latent_mask=latent_mask)
        has_latents = batch["latent_positions"].shape[1] > 0
        batch["gate_query_mask"] = (gated_query_mask(image_mask, latent_mask, attention_mask, self.gate_question_tokens,
                                                     self.gate_readout)
                                    if has_latents else torch.zeros_like(image_mask))
        for key in ("v_sem", "traj_target", "kd_ids"):
            missing = [e["id"] for e in examples if key not in e]
            if 0 < len(missing) < bsz:
                raise ValueError(f"{key} missing for samples {missing} while others in the batch have it")
        if "v_sem" in examples[0]:
            dims = {e["v_sem"].shape[-1] for e in examples}
            if len(dims) != 1:
                raise ValueError(f"V_sem targets in one batch have different dimensions {sorted(dims)}")
            batch["v_sem"] = torch.stack([e["v_sem"] for e in examples])
        if "traj_target" in examples[0]:
            batch["traj_target"] = pad_sequence([e["traj_target"] for e in examples], batch_first=True)
            if batch["traj_target"].shape != image_index.shape:
                raise ValueError("trajectory targets do not match the image token counts of their samples")
        if "kd_ids" in examples[0]:
            batch["kd_ids"] = pad_sequence([e["kd_ids"] for e in examples], batch_first=True, padding_value=-1)
            batch["kd_logprobs"] = pad_sequence([e["kd_logprobs"] for e in examples], batch_first=True)
            batch["kd_mask"] = pad_sequence([torch.ones(len(e["kd_ids"]), dtype=torch.bool) for e in examples],
                                            batch_first=True)
        return batch

"""The LaViT student (paper Fig. 1, §4.2): a Qwen-VL (any supported family) that reads `[I, X_q, V, X_ans]`
under curriculum sensory gating and exposes what the three losses need."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lavit.models.attention import LAVIT_ATTENTION, GateAttention, LatentAttentionProbe, flex_gate_chosen
from lavit.models.continuous_latents import decode_with_feedback, latent_feedback_of
from lavit.models.families import family_of
from lavit.models.gating import build_flex_gate, build_gated_attention_mask
from lavit.models.projection_head import ProjectionHead


@dataclass
class StudentOutput:
    hidden_states: torch.Tensor  # [B, S, D] after the final norm
    ntp_logits: torch.Tensor | None  # [N, V] logits at the positions that predict labelled tokens
    ntp_targets: torch.Tensor | None  # [N]
    concept_pred: torch.Tensor | None  # [B, D_teacher] = φ_mlp(h_z), h_z = last latent token's state
    student_traj: torch.Tensor | None  # [B, K, N_img] latent→image attention, a distribution over image tokens
    readout_latent_mass: torch.Tensor | None = None  # [B] the readout's attention mass on latents 1..K-1


def base_model(model: nn.Module) -> nn.Module:
    """The `*ForConditionalGeneration` inside an optional peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LavitStudent(nn.Module):
    """Wraps a Qwen-VL `*ForConditionalGeneration` (text decoder on `lavit_sdpa`), through its `ModelFamily`.

    `gamma` is the current gate value γ(t); the training callback sets it from the global step.
    With γ = 1 the decoder runs with the plain 2-D mask: exactly the unmodified model. Maps and the gate
    cover the softmax-attention layers (all of them, except in hybrid linear-attention decoders).
    With `gate_readout` the last latent is on the answer's side of the gate, so the trajectory map
    (eq. 7) covers latents 1..K-1 only; `readout_mass` records how much of the readout's attention
    lands on them (the L_read term).

    Continuous latents (`lavit.models.continuous_latents`, the design attached to `model`): every forward is K−1
    feedback passes and a final pass, which the gate, the maps, the concept head and the text loss read. The text
    loss then skips the targets `<lvr_2>..<lvr_K>`: the states at latents 1..K−1 are fed forward as thoughts, not
    read as token predictions (Coconut supervises none either); the prompt still learns to emit `<lvr_1>`.
    """

    def __init__(self, model: nn.Module, latent_token_ids: list[int], projection_head: ProjectionHead | None = None,
                 trajectory_loss: bool = True, gate_readout: bool = False, readout_mass: bool = False):
        super().__init__()
        self.model = model
        self.projection_head = projection_head
        self.latent_token_ids = list(latent_token_ids)
        self.trajectory_loss = trajectory_loss and bool(latent_token_ids)
        if (gate_readout or readout_mass) and len(self.latent_token_ids) < 2:
            raise ValueError("a gated readout or the readout's attention mass needs at least 2 latent tokens")
        self.gate_readout = gate_readout
        self.readout_mass = readout_mass
        self.gamma = 1.0
        self._fed_ids: torch.Tensor | None = None  # `_fed_back_ids`' cache
        hf = base_model(model)
        self.latent_feedback = latent_feedback_of(hf)  # None: discrete latents
        if self.latent_feedback is not None and len(self.latent_token_ids) < 2:
            raise ValueError("continuous latents need at least 2 latent tokens (latent 1 feeds latent 2)")
        self.family = family_of(hf)
        self.attention_layers = self.family.attention_layers(hf.config.text_config)
        # accelerate's FSDP wrap policy reads this when the engine config names no layer classes
        self._no_split_modules = self.family.shard_units(hf)

    @property
    def hf_model(self) -> nn.Module:
        return base_model(self.model)

    @property
    def config(self):
        """The Qwen-VL config: engines read it off the module they wrap (DeepSpeed's `auto` bucket sizes
        come from its hidden size)."""
        return self.hf_model.config

    gate_attention: GateAttention = "auto"  # how the gate reaches the softmax layers; `lavit train` sets it

    def _fed_back_ids(self, device: torch.device) -> torch.Tensor:
        """The ids of `<lvr_2>..<lvr_K>` [K−1] on `device`, built once (again only if the device changes)."""
        if self._fed_ids is None or self._fed_ids.device != device:
            self._fed_ids = torch.tensor(self.latent_token_ids[1:], device=device)
        return self._fed_ids

    def _decoder_inputs(self, batch: dict) -> dict:
        """The backbone's keyword arguments over `batch` under the current gate: built once per step, every feedback
        pass of continuous latents reuses its mask, mRoPE positions and block mask."""
        hf = self.hf_model
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        mask, position_ids = attention_mask, None
        extra = {}
        if self.gamma < 1.0 and bool(batch["gate_query_mask"].any()):
            if flex_gate_chosen(self.gate_attention, input_ids.device):
                text_attention = hf.config.text_config._attn_implementation
                if text_attention != LAVIT_ATTENTION:
                    raise ValueError(f"the gate on FlexAttention needs the text model on '{LAVIT_ATTENTION}', not "
                                     f"{text_attention!r} (which would ignore it)")
                # The 2-D mask stays: the model positions tokens and masks linear-attention layers from it; the
                # softmax layers take causal + padding from the gate's block mask instead.
                extra["lavit_gate"] = build_flex_gate(attention_mask, batch["image_mask"], batch["gate_query_mask"],
                                                      self.gamma)
            else:
                # mRoPE positions come from the 2-D padding mask, before it is replaced by the 4-D gated mask.
                position_ids = self.family.rope_positions(hf, batch)  # [3, B, S]
                gated = build_gated_attention_mask(attention_mask, batch["image_mask"], batch["gate_query_mask"],
                                                   self.gamma, dtype=hf.dtype)  # [B, 1, S, S]
                mask = self.family.decoder_mask(hf.config.text_config, gated, attention_mask)
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
                "pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"],
                "mm_token_type_ids": batch["mm_token_type_ids"], "use_cache": False, **extra}

    def _decode(self, inputs: dict, probe) -> torch.Tensor:
        """The decoder over `_decoder_inputs`, `probe` recording attention rows: [B, S, D]."""
        extra = {"lavit_probe": probe} if probe is not None else {}
        return self.family.backbone(self.hf_model)(**inputs, **extra).last_hidden_state  # [B, S, D]

    @torch.no_grad()
    def attention_from(self, batch: dict, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of the query `positions` [B, R] over all keys under the current gate, averaged over
        layers and heads, [B, R, S], and the final states [B, S, D] (diagnostics: where latent or
        answer-producing tokens look, and what they then predict)."""
        probe = LatentAttentionProbe(positions)
        hidden = self._decode_latents(batch, probe)
        return probe.mean_map(self.attention_layers), hidden

    def _decode_latents(self, batch: dict, probe) -> torch.Tensor:
        """`_decode`, after the feedback passes for continuous latents (the probe records the final pass): [B, S, D]."""
        inputs = self._decoder_inputs(batch)
        if self.latent_feedback is None:
            return self._decode(inputs, probe)
        return decode_with_feedback(self.hf_model, lambda final: self._decode(inputs, probe if final else None),
                                    batch["latent_positions"], self.latent_feedback)

    def forward(self, batch: dict) -> StudentOutput:
        hf = self.hf_model
        num_latents = batch["latent_positions"].shape[1]
        probe = (LatentAttentionProbe(batch["latent_positions"]) if self.trajectory_loss or self.readout_mass
                 else None)
        hidden = self._decode_latents(batch, probe)  # [B, S, D]

        ntp_logits = ntp_targets = None
        if "labels" in batch:
            predicts = batch["labels"][:, 1:] != -100  # [B, S-1]: position t predicts label t+1
            if self.latent_feedback is not None:  # latents 1..K-1 feed the next latent, they predict no token
                predicts &= ~torch.isin(batch["labels"][:, 1:], self._fed_back_ids(predicts.device))
            ntp_logits = hf.lm_head(hidden[:, :-1][predicts])  # [N, V]
            ntp_targets = batch["labels"][:, 1:][predicts]  # [N]

        concept_pred = None
        if self.projection_head is not None and num_latents > 0:
            last = batch["latent_positions"][:, -1]  # [B]
            latent_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, D]
            concept_pred = self.projection_head(latent_hidden)  # [B, D_teacher]

        student_traj = readout_latent_mass = None
        if probe is not None:
            full = probe.mean_map(self.attention_layers)  # [B, K, S]
            if self.trajectory_loss:
                mapped = full[:, :-1] if self.gate_readout else full  # [B, K or K-1, S]
                student_traj = latent_image_distribution(mapped, batch["image_index"], batch["image_valid"])
            if self.readout_mass:
                earlier = batch["latent_positions"][:, :-1]  # [B, K-1]
                readout_latent_mass = full[:, -1].gather(1, earlier).sum(dim=1)  # [B]
        return StudentOutput(hidden, ntp_logits, ntp_targets, concept_pred, student_traj, readout_latent_mass)


def latent_image_distribution(attn: torch.Tensor, image_index: torch.Tensor, image_valid: torch.Tensor) -> torch.Tensor:
    """Restrict latent attention [B, K, S] to each example's image tokens and renormalise: [B, K, N]."""
    index = image_index[:, None, :].expand(-1, attn.shape[1], -1)  # [B, K, N]
    on_image = attn.gather(2, index) * image_valid[:, None, :]  # [B, K, N]
    return on_image / on_image.sum(dim=-1, keepdim=True)

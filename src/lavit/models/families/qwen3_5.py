"""Qwen3.5: a hybrid decoder — most layers Gated DeltaNet (linear attention, a recurrent state), every
`full_attention_interval`-th layer gated softmax attention — under Qwen3-VL's vision side (no DeepStack).

What LaViT's pieces mean here (DESIGN §2): A_traj (eq. 2), the student map and L_traj (eq. 7) are averages
over the softmax-attention layers only, the only layers with attention weights over image keys. The gate
(eq. 4) biases those layers only: the linear-attention layers still carry the image into every later
token's state, so on this family the gate weakens the answer's direct view of the image but cannot close it.
"""

from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

from lavit.models.families.base import ModelFamily
from lavit.models.families.layout import text_config_kwargs, token_ids
from lavit.models.families.qwen3_vl import vision_config

ROTARY_FRACTION = 0.5  # tiny models: rotary on half of each head (Qwen3.5 uses 0.25 of 256)


def tiny_config(tokenizer, spec) -> Qwen3_5Config:
    layers = spec.num_hidden_layers
    head_dim = spec.hidden_size // spec.num_attention_heads
    text = text_config_kwargs(tokenizer, spec, interleaved_mrope=True, rotary_fraction=ROTARY_FRACTION)
    text.update(head_dim=head_dim, linear_num_key_heads=spec.num_key_value_heads,
                linear_num_value_heads=spec.num_key_value_heads, linear_key_head_dim=head_dim // 2,
                linear_value_head_dim=head_dim // 2,
                # linear, …, full: the last layer (and every second one) is softmax attention
                layer_types=["full_attention" if (i + 1) % 2 == 0 else "linear_attention" for i in range(layers)])
    return Qwen3_5Config(text_config=text, vision_config=vision_config(spec, FAMILY.patch_size),
                         tie_word_embeddings=spec.tie_word_embeddings, **token_ids(tokenizer))


FAMILY = ModelFamily(model_type="qwen3_5", model_class=Qwen3_5ForConditionalGeneration,
                     processor_class=Qwen3VLProcessor, video_processor_class=Qwen3VLVideoProcessor, patch_size=16,
                     default_system_prompt=None, tiny_config=tiny_config)

"""What `lavit eval --model` can name: a trained student, a plain Qwen-VL of a supported family, or
`constant:<letter>`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from lavit.data.samples import to_rgb
from lavit.eval.items import EvalItem
from lavit.eval.protocols import Protocol, authors, get_protocol
from lavit.eval.protocols.lavit import PROTOCOL as LAVIT_PROTOCOL
from lavit.eval.protocols.lmms_eval import fetch_image
from lavit.inference.engines import TransformersEngine, build_engine
from lavit.inference.generate import LATENT_MODES
from lavit.models.checkpoint import read_lavit_meta, tiny_name
from lavit.models.continuous_latents import LatentFeedback
from lavit.models.gating import InferenceGate
from lavit.models.grid import processor_pixel_limits
from lavit.models.latent_tokens import LATENT_TEMPLATE_FLAG


@dataclass
class ConstantModel:
    """Answers the same letter to every question: chance baselines and scorer sanity checks."""

    letter: str
    protocol: Protocol = LAVIT_PROTOCOL

    def describe(self) -> dict:
        return {"model": f"constant:{self.letter}", "protocol": {**self.protocol.describe(), "deviations": {}}}

    def answer(self, items: list[EvalItem], max_new_tokens: int | None = None) -> list[str]:
        return [self.letter] * len(items)


def _family_type(name: str) -> str:
    """The model type of a checkpoint, hub id or tiny name, read from its config only."""
    tiny = tiny_name(name)
    return tiny[1] if tiny else AutoConfig.from_pretrained(name).model_type


class GenerativeModel:
    """A Qwen-VL checkpoint answering greedily, with or without latent tokens (DESIGN §2 modes), on transformers
    (`.model`, `.processor`: the audit's interventions use them) or on vLLM (`engine='vllm'`: forced, natural and
    none; no inference gate, no continuous latents; `max_images` images per prompt at most), as an evaluation
    protocol asks (`lavit.eval.protocols`): its latent mode, decoding, eos, resolution, system prompt and image
    resize, unless told otherwise — and what is told otherwise is recorded as a deviation from the protocol.

    `min_pixels`/`max_pixels` given are a deviation unless `pixels_by` says where they come from (`lavit eval
    --suite paper` under protocol `lavit`: Table A1's limits for every model); `max_new_tokens` None is the
    protocol's per benchmark; `processor` a folder to take the processor from (a checkpoint saved without one);
    `force_lvr` the authors' `--force_lvr` variant (protocol `authors` only).
    """

    def __init__(self, name: str, *, protocol: Protocol | str = LAVIT_PROTOCOL, latent_tokens: list[str] | None = None,
                 mode: str | None = None, system_prompt: str | None = None, max_new_tokens: int | None = None,
                 dtype: str = "auto", device_map: str = "", seed: int = 0, min_pixels: int = 0, max_pixels: int = 0,
                 pixels_by: str = "", engine: str = "transformers", tensor_parallel_size: int = 1,
                 max_model_len: int = 0, max_images: int = 4, enforce_eager: bool = False, processor: str = "",
                 force_lvr: bool = False):
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        self.name = name
        meta = read_lavit_meta(name) if Path(name).is_dir() else {}
        family = _family_type(name)
        if self.protocol.families is not None and family not in self.protocol.families:
            raise ValueError(f"protocol {self.protocol.name!r} replicates {', '.join(self.protocol.families)} models "
                             f"only; {name} is {family} (lmms-eval's own class for it resizes, prompts and decodes "
                             "otherwise): run lmms-eval itself with --model lavit, or use --protocol lavit")
        if force_lvr and self.protocol.name != "authors":
            raise ValueError("force_lvr is the authors' evaluator's --force_lvr: use it with --protocol authors")
        if mode is not None and mode not in LATENT_MODES:
            raise ValueError(f"latent mode must be one of {LATENT_MODES}, got {mode!r}")
        self.deviations: dict = {}
        self.latent_tokens = list(latent_tokens) if latent_tokens else list(meta.get("latent_tokens", []))
        if force_lvr:
            if mode not in (None, "forced"):
                raise ValueError(f"force_lvr appends the latent tokens (forced mode); latent mode {mode!r} contradicts it")
            self.latent_tokens, mode = [authors.FORCE_TOKEN] * authors.FORCE_COUNT, "forced"
        self.force_lvr = force_lvr
        if system_prompt is not None:
            self.deviations["system_prompt"] = system_prompt
        elif self.protocol.system_prompt == "trained":
            system_prompt = meta.get("system_prompt") or None
        self.system_prompt = system_prompt
        self.gate = InferenceGate.from_meta(meta)  # a student trained to a final γ < 1 keeps its gate
        # continuous latents: the loader attaches the design to the model, which lavit's generation then runs
        self.latent_feedback = LatentFeedback.from_meta(meta)
        self.max_new_tokens = max_new_tokens
        if max_new_tokens is not None:
            self.deviations["max_new_tokens"] = max_new_tokens
        pixels = self._pixels(meta, min_pixels, max_pixels, pixels_by)
        rule_mode = mode or self._rule_mode()
        if rule_mode == "none":
            self.latent_tokens = []  # nothing appended, nothing suppressed
        self.engine = build_engine(engine, name, dtype=dtype, device_map=device_map, seed=seed, **pixels,
                                   gate=self.gate, max_images=max_images, tensor_parallel_size=tensor_parallel_size,
                                   max_model_len=max_model_len, enforce_eager=enforce_eager, mode=rule_mode,
                                   latent_tokens=self.latent_tokens, processor=processor,
                                   decoding={"decoding": self.protocol.decoding, "eos": self.protocol.eos,
                                             "sampling_from_checkpoint": self.protocol.sampling_from_checkpoint})
        self.engine_name = self.engine.name
        self.processor_path = processor
        # transformers: the loaded model, which the audit's interventions hook; vLLM holds its own
        self.model = self.engine.model if isinstance(self.engine, TransformersEngine) else None
        self.processor = self.engine.processor
        self.mode = rule_mode or self._template_mode()
        if self.mode == "none":
            self.latent_tokens = []
        elif not self.latent_tokens:
            raise ValueError(f"latent mode {self.mode!r} needs latent tokens: {name} has no lavit.json; pass "
                             "--latent-tokens '<lvr1>,<lvr2>,...'")
        self._check_tokens()

    def _pixels(self, meta: dict, min_pixels: int, max_pixels: int, pixels_by: str) -> dict[str, int]:
        """The processor limits to load with (0 = as saved) and where they come from."""
        rule = self.protocol.pixels
        if min_pixels or max_pixels:
            self.pixels_by = pixels_by or "--min-pixels/--max-pixels"
            if not pixels_by and (not isinstance(rule, tuple) or (min_pixels, max_pixels) != rule):
                self.deviations["pixels"] = [min_pixels, max_pixels]
            return {"min_pixels": min_pixels, "max_pixels": max_pixels}
        if isinstance(rule, tuple):
            self.pixels_by = f"protocol {self.protocol.name}"
            return {"min_pixels": rule[0], "max_pixels": rule[1]}
        if rule == "trained" and (meta.get("min_pixels") or meta.get("max_pixels")):
            self.pixels_by = "lavit.json (the limits it was trained at)"
            return {"min_pixels": meta.get("min_pixels", 0), "max_pixels": meta.get("max_pixels", 0)}
        self.pixels_by = "the checkpoint's processor"
        return {"min_pixels": 0, "max_pixels": 0}

    def _rule_mode(self) -> str | None:
        """The protocol's latent mode where it does not depend on the chat template (None: decided after loading)."""
        rule = self.protocol.latent_mode
        if rule == "template":
            return None
        return rule if self.latent_tokens else "none"

    def _template_mode(self) -> str:
        """What the checkpoint's own chat template does: an exported lavit student's appends its latents (forced);
        otherwise the model writes its latents itself (natural) or has none."""
        if self.latent_tokens and LATENT_TEMPLATE_FLAG in (self.processor.chat_template or ""):
            return "forced"
        return "natural" if self.latent_tokens else "none"

    def _check_tokens(self) -> None:
        tokenizer = self.processor.tokenizer
        vocab = tokenizer.get_vocab()
        missing = sorted({t for t in self.latent_tokens if t not in vocab})
        if self.force_lvr and missing:
            raise ValueError(f"force_lvr appends {authors.FORCE_TOKEN!r} ×{authors.FORCE_COUNT}, as the authors' "
                             f"evaluator means to, but {self.name}'s tokenizer has no {authors.FORCE_TOKEN!r} (a checkpoint "
                             "saved their way has <lvr1>…<lvr4>): their evaluator adds it with id "
                             f"{len(tokenizer)}, past the {self._embedding_rows()}-row embedding table, so the variant "
                             "cannot run on it")
        if missing:
            raise ValueError(f"{self.name}'s tokenizer has no latent tokens {missing}; pass the names it was trained "
                             "with via --latent-tokens")
        rows = self._embedding_rows()
        outside = sorted({t for t in self.latent_tokens if vocab[t] >= rows})
        if outside:
            raise ValueError(f"latent tokens {outside} of {self.name} have ids {[vocab[t] for t in outside]}, past its "
                             f"{rows}-row embedding table: no embedding was trained for them")

    def _embedding_rows(self) -> int:
        if self.model is not None:
            return self.model.get_input_embeddings().num_embeddings
        return AutoConfig.from_pretrained(self.name).get_text_config().vocab_size

    @property
    def pixel_limits(self) -> dict[str, int]:
        """The image processor's pixel limits in force: the resolution every answer was produced at."""
        return processor_pixel_limits(self.processor.image_processor)

    def describe(self) -> dict:
        return {"model": self.name, "latent_tokens": self.latent_tokens, "latent_mode": self.mode,
                "system_prompt": self.system_prompt,
                "protocol": {**self.protocol.describe(), "deviations": dict(self.deviations),
                             **({"variant": "force_lvr"} if self.force_lvr else {})},
                **({"inference_gate": vars(self.gate)} if self.gate else {}),
                **(self.latent_feedback.to_meta() if self.latent_feedback else {}),
                **({"engine": self.engine_name} if self.engine_name != "transformers" else {}),
                **({"processor": self.processor_path} if self.processor_path else {}),
                "decoding": self.engine.decoding, "dtype": self.engine.dtype, "pixels_by": self.pixels_by,
                **self.pixel_limits}

    def answer(self, items: list[EvalItem], max_new_tokens: int | None = None) -> list[str]:
        return self.generate([[ref.open() for ref in item.images] for item in items],
                             [item.prompt for item in items], max_new_tokens=max_new_tokens)

    def generate(self, images: list[list], prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers for prompts with their images (a list per prompt, possibly empty; resized first where the
        protocol's harness does): `max_new_tokens` as asked, else as the model was told, else the protocol's default."""
        tokens = max_new_tokens or self.max_new_tokens or self.protocol.default_max_new_tokens
        if self.protocol.image_transport == "qwen_vl_utils":
            images = [[fetch_image(to_rgb(image)) for image in per_prompt] for per_prompt in images]
        return self.engine.generate(images, prompts, latent_tokens=self.latent_tokens, mode=self.mode,
                                    system_prompt=self.system_prompt, max_new_tokens=tokens,
                                    keep_special_tokens=self.protocol.keep_special_tokens)

    def close(self) -> None:
        """Release the engine (vLLM's processes and memory)."""
        self.engine.close()


def load_eval_model(spec: str, **kwargs):
    """`constant:<letter>`, 'tiny[:FAMILY]' / 'tiny-teacher[:FAMILY]', or a Qwen-VL path / hub id."""
    if spec.startswith("constant:"):
        letter = spec.split(":", 1)[1].strip().upper()
        if len(letter) != 1 or not letter.isalpha():
            raise ValueError(f"constant model needs one letter, e.g. constant:A, got {spec!r}")
        protocol = kwargs.get("protocol", LAVIT_PROTOCOL)
        return ConstantModel(letter, get_protocol(protocol) if isinstance(protocol, str) else protocol)
    if tiny_name(spec) is None and not Path(spec).is_dir() and spec.count("/") != 1:
        raise FileNotFoundError(f"model {spec!r} is neither a directory, a hub id (org/name), 'tiny' nor constant:<X>")
    return GenerativeModel(spec, **kwargs)

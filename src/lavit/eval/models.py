"""What `lavit eval --model` can name: a trained student, a plain Qwen-VL of a supported family, or
`constant:<letter>`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lavit.eval.items import EvalItem
from lavit.inference.engines import TransformersEngine, build_engine
from lavit.inference.generate import LATENT_MODES
from lavit.models.checkpoint import read_lavit_meta, tiny_name
from lavit.models.gating import InferenceGate
from lavit.models.grid import processor_pixel_limits


@dataclass
class ConstantModel:
    """Answers the same letter to every question: chance baselines and scorer sanity checks."""

    letter: str

    def describe(self) -> dict:
        return {"model": f"constant:{self.letter}"}

    def answer(self, items: list[EvalItem]) -> list[str]:
        return [self.letter] * len(items)


class GenerativeModel:
    """A Qwen-VL checkpoint answering greedily, with or without latent tokens (DESIGN §2 modes), on transformers
    (`.model`, `.processor`: the audit's interventions use them) or on vLLM (`engine='vllm'`: forced, natural and
    none; no inference gate; `max_images` images per prompt at most)."""

    def __init__(self, name: str, *, latent_tokens: list[str] | None = None, mode: str | None = None,
                 system_prompt: str | None = None, max_new_tokens: int = 32, dtype: str = "auto",
                 device_map: str = "", seed: int = 0, min_pixels: int = 0, max_pixels: int = 0,
                 engine: str = "transformers", tensor_parallel_size: int = 1, max_model_len: int = 0,
                 max_images: int = 4, enforce_eager: bool = False):
        meta = read_lavit_meta(name) if Path(name).is_dir() else {}
        self.latent_tokens = list(latent_tokens) if latent_tokens else list(meta.get("latent_tokens", []))
        self.mode = mode or ("forced" if self.latent_tokens else "none")
        if self.mode not in LATENT_MODES:
            raise ValueError(f"latent mode must be one of {LATENT_MODES}, got {self.mode!r}")
        if self.mode == "none":
            self.latent_tokens = []
        elif not self.latent_tokens:
            raise ValueError(f"latent mode {self.mode!r} needs latent tokens: {name} has no lavit.json; pass "
                             "--latent-tokens '<lvr1>,<lvr2>,...'")
        self.system_prompt = system_prompt if system_prompt is not None else (meta.get("system_prompt") or None)
        self.gate = InferenceGate.from_meta(meta)  # a student trained to a final γ < 1 keeps its gate
        self.name = name
        self.max_new_tokens = max_new_tokens
        # Resolution: as asked, else the limits the student was trained at (lavit.json), else the processor's.
        self.engine = build_engine(engine, name, dtype=dtype, device_map=device_map, seed=seed,
                                   min_pixels=min_pixels or meta.get("min_pixels", 0),
                                   max_pixels=max_pixels or meta.get("max_pixels", 0), gate=self.gate,
                                   max_images=max_images, tensor_parallel_size=tensor_parallel_size,
                                   max_model_len=max_model_len, enforce_eager=enforce_eager, mode=self.mode,
                                   latent_tokens=self.latent_tokens)
        self.engine_name = self.engine.name
        # transformers: the loaded model, which the audit's interventions hook; vLLM holds its own
        self.model = self.engine.model if isinstance(self.engine, TransformersEngine) else None
        self.processor = self.engine.processor
        self._check_tokens()

    def _check_tokens(self) -> None:
        tokenizer = self.processor.tokenizer
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.latent_tokens if t not in vocab]
        if missing:
            raise ValueError(f"{self.name}'s tokenizer has no latent tokens {missing}; pass the names it was trained "
                             "with via --latent-tokens")

    @property
    def pixel_limits(self) -> dict[str, int]:
        """The image processor's pixel limits in force: the resolution every answer was produced at."""
        return processor_pixel_limits(self.processor.image_processor)

    def describe(self) -> dict:
        return {"model": self.name, "latent_tokens": self.latent_tokens, "latent_mode": self.mode,
                "system_prompt": self.system_prompt, "max_new_tokens": self.max_new_tokens,
                **({"inference_gate": vars(self.gate)} if self.gate else {}),
                **({"engine": self.engine_name} if self.engine_name != "transformers" else {}),
                "dtype": self.engine.dtype, **self.pixel_limits}

    def answer(self, items: list[EvalItem]) -> list[str]:
        return self.generate([[ref.open() for ref in item.images] for item in items], [item.prompt for item in items])

    def generate(self, images: list[list], prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers for prompts with their images (a list per prompt, possibly empty)."""
        return self.engine.generate(images, prompts, latent_tokens=self.latent_tokens, mode=self.mode,
                                    system_prompt=self.system_prompt,
                                    max_new_tokens=max_new_tokens or self.max_new_tokens)

    def close(self) -> None:
        """Release the engine (vLLM's processes and memory)."""
        self.engine.close()


def load_eval_model(spec: str, **kwargs):
    """`constant:<letter>`, 'tiny[:FAMILY]' / 'tiny-teacher[:FAMILY]', or a Qwen-VL path / hub id."""
    if spec.startswith("constant:"):
        letter = spec.split(":", 1)[1].strip().upper()
        if len(letter) != 1 or not letter.isalpha():
            raise ValueError(f"constant model needs one letter, e.g. constant:A, got {spec!r}")
        return ConstantModel(letter)
    if tiny_name(spec) is None and not Path(spec).is_dir() and spec.count("/") != 1:
        raise FileNotFoundError(f"model {spec!r} is neither a directory, a hub id (org/name), 'tiny' nor constant:<X>")
    return GenerativeModel(spec, **kwargs)

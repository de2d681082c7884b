"""The toy world: scenes of 2–3 coloured shapes on a grid of slots, with ground-truth boxes, and questions
that need one region of the image — with a tunable language prior a text-only model can exploit.

Layout. A 168 × 168 image is 6 × 6 merged Qwen tokens (28 px each); it is cut into 3 × 3 slots of
56 px, and each object (side 44–52 px, jittered inside its slot) fills one slot, so it covers exactly
the 2 × 2 merged tokens of that slot. Perception is then a per-token property (what colour and shape
is under this token), which tiny vision towers learn in minutes on a CPU; finding *which* token the
question is about — where to look — is what the language model has to learn.

Question kinds (each names its evidence box):
* color — "what color is the triangle ?" → the triangle's colour. Each shape has a *prior* colour
          (triangle→red, circle→blue, square→green) that it takes with probability `prior_strength`
          (default 0.7; 0.25 makes all four colours equally likely), so a blind model is right
          `prior_strength` of the time;
* shape — "which shape is yellow ?" (the colour is unique in the scene) → the shape.

The premise world (`WORLDS["premise"]`, `lavit demo --world premise`) makes *finding* the evidence the hard part,
as for a real student that looks in the wrong places and guesses from priors: the same 168 × 168 canvas
(6 × 6 merged tokens, so it costs what the default world costs) with 3–5 objects in its 9 slots, of
four shapes (a diamond, prior yellow, joins the three) that may repeat, so the asked-about object is one
among coloured distractors. Questions name only an object that is unique in its scene (its shape, or
its colour). Most questions (`shape_question_share` 0.6; 52 % once scenes without a uniquely coloured
object fall back to a colour question) ask which shape has a colour: the kind a student learns last (find
the one object of that colour, then read its shape off four 28-px tokens), and the prior is weaker
(`prior_strength` 0.5: right about half the time on either kind), so a student that does not find the
evidence guesses and stays far below the teacher.

Scenes are drawn from seeded streams: `generate(split, n, world_seed=W, draw=D)` uses the stream
(W, split, D). Splits (pretrain, teacher, pool, val, test) never share a stream; the toy models are
trained on world 0's pretrain/teacher streams, and `lavit demo --world-seed W` draws its pool, val and
test scenes from world W's streams (the same world, other scenes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
ALL_SHAPES = ("circle", "square", "triangle", "diamond")  # a world uses the first `WorldConfig.num_shapes`
SHAPES = ALL_SHAPES[:3]  # the default world's
PRIOR_COLOR = {"triangle": "red", "circle": "blue", "square": "green", "diamond": "yellow"}
KINDS = ("color", "shape")
SPLITS = {"pretrain": 1, "teacher": 2, "pool": 3, "val": 4, "test": 5}
BACKGROUND = (128, 128, 128)
CELL = 28  # pixels per merged Qwen token (patch 14 × merge 2)


@dataclass(frozen=True)
class WorldConfig:
    image_size: int = 168
    slot_size: int = 56
    min_objects: int = 2
    max_objects: int = 3
    min_side: int = 44
    max_side: int = 52
    prior_strength: float = 0.7
    shape_question_share: float = 0.33  # of the questions, when the scene has a uniquely coloured object
    num_shapes: int = 3  # the first num_shapes of ALL_SHAPES
    distinct_shapes: bool = True  # False: shapes repeat in a scene (distractors); questions name unique objects

    def __post_init__(self) -> None:
        if not 1 <= self.num_shapes <= len(ALL_SHAPES):
            raise ValueError(f"num_shapes must be in [1, {len(ALL_SHAPES)}]")
        if not 0.0 <= self.prior_strength <= 1.0:
            raise ValueError("prior_strength must be in [0, 1]")
        if not 0.0 <= self.shape_question_share <= 1.0:
            raise ValueError("shape_question_share must be in [0, 1]")
        if self.image_size % self.slot_size or self.slot_size % CELL:
            raise ValueError(f"image_size must be a multiple of slot_size, and slot_size a multiple of {CELL}")
        # An object must cover every merged-token centre of its slot (and only those), whatever its jitter.
        if not self.slot_size - CELL // 2 < self.min_side <= self.max_side <= self.slot_size:
            raise ValueError(f"need slot_size - {CELL // 2} < min_side <= max_side <= slot_size")
        slots = (self.image_size // self.slot_size) ** 2
        most = min(self.num_shapes, slots) if self.distinct_shapes else slots
        if not 1 <= self.min_objects <= self.max_objects <= most:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {most}")

    @property
    def grid(self) -> int:
        """Merged tokens per image side."""
        return self.image_size // CELL

    @property
    def shapes(self) -> tuple[str, ...]:
        return ALL_SHAPES[:self.num_shapes]


PREMISE_WORLD = WorldConfig(min_objects=3, max_objects=5, num_shapes=4, distinct_shapes=False, prior_strength=0.5,
                            shape_question_share=0.6)
WORLDS = {"default": WorldConfig(), "premise": PREMISE_WORLD}


@dataclass
class ToyObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2


@dataclass
class ToySample:
    id: str
    image: Image.Image
    question: str
    answer: str
    bbox: list[int]
    kind: str
    prior_answer: str | None  # what the language prior alone says (None: it says nothing)
    objects: list[ToyObject] = field(default_factory=list)


def _color_for(shape: str, rng: np.random.Generator, cfg: WorldConfig) -> str:
    if rng.random() < cfg.prior_strength:
        return PRIOR_COLOR[shape]
    others = [c for c in COLORS if c != PRIOR_COLOR[shape]]
    return others[rng.integers(len(others))]


def draw(objects: list[ToyObject], size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        fill = COLORS[obj.color]
        # PIL's ellipse/rectangle include the end pixel; the box is half-open, so draw to x2 - 1.
        if obj.shape == "circle":
            pen.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif obj.shape == "square":
            pen.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif obj.shape == "diamond":
            mx, my = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2
            pen.polygon([(mx, y1), (x2 - 1, my), (mx, y2 - 1), (x1, my)], fill=fill)
        else:
            pen.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=fill)
    return image


def cell_labels(objects: list[ToyObject], cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per merged token, in raster order, the colour and shape under its centre: ([g*g], [g*g]) int64, with
    0 for background, 1 + index into COLORS / ALL_SHAPES for an object (the toy vision pretraining's targets)."""
    g = cfg.grid
    centres = np.arange(g) * CELL + CELL // 2
    colour, shape = np.zeros((g, g), dtype=np.int64), np.zeros((g, g), dtype=np.int64)
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        rows = (centres >= y1) & (centres < y2)
        cols = (centres >= x1) & (centres < x2)
        inside = rows[:, None] & cols[None, :]
        colour[inside] = list(COLORS).index(obj.color) + 1
        shape[inside] = ALL_SHAPES.index(obj.shape) + 1
    return colour.reshape(-1), shape.reshape(-1)


def make_scene(rng: np.random.Generator, cfg: WorldConfig) -> list[ToyObject]:
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if cfg.distinct_shapes:
        picks = rng.permutation(cfg.num_shapes)[:count]
    else:
        picks = rng.integers(cfg.num_shapes, size=count)
        while not (np.bincount(picks, minlength=cfg.num_shapes) == 1).any():  # a colour question needs a unique shape
            picks = rng.integers(cfg.num_shapes, size=count)
    shapes = [ALL_SHAPES[i] for i in picks]
    per_side = cfg.image_size // cfg.slot_size
    slots = rng.permutation(per_side * per_side)[:count]
    objects = []
    for shape, slot in zip(shapes, slots.tolist()):
        side = int(rng.integers(cfg.min_side, cfg.max_side + 1))
        x = (slot % per_side) * cfg.slot_size + int(rng.integers(0, cfg.slot_size - side + 1))
        y = (slot // per_side) * cfg.slot_size + int(rng.integers(0, cfg.slot_size - side + 1))
        objects.append(ToyObject(shape, _color_for(shape, rng, cfg), (x, y, x + side, y + side)))
    return objects


def _prior_shape(color: str, cfg: WorldConfig) -> str | None:
    """The shape whose prior colour is `color` in this world (default world's yellow: none)."""
    return next((s for s in cfg.shapes if PRIOR_COLOR[s] == color), None)


def _question(objects: list[ToyObject], target: ToyObject, kind: str, cfg: WorldConfig, sample_id: str,
              image: Image.Image) -> ToySample:
    if kind == "shape":
        return ToySample(sample_id, image, f"which shape is {target.color} ?", target.shape, list(target.box),
                         "shape", _prior_shape(target.color, cfg), objects)
    return ToySample(sample_id, image, f"what color is the {target.shape} ?", target.color, list(target.box),
                     "color", PRIOR_COLOR[target.shape], objects)


def _unique(objects: list[ToyObject], attribute: str) -> list[ToyObject]:
    values = [getattr(o, attribute) for o in objects]
    return [o for o in objects if values.count(getattr(o, attribute)) == 1]


def make_sample(rng: np.random.Generator, cfg: WorldConfig, sample_id: str) -> ToySample:
    objects = make_scene(rng, cfg)
    image = draw(objects, cfg.image_size)
    unique = _unique(objects, "color")
    if unique and rng.random() < cfg.shape_question_share:
        return _question(objects, unique[rng.integers(len(unique))], "shape", cfg, sample_id, image)
    named = _unique(objects, "shape")  # every object in a distinct-shape world
    return _question(objects, named[rng.integers(len(named))], "color", cfg, sample_id, image)


def make_pair(rng: np.random.Generator, cfg: WorldConfig, pair_id: str) -> tuple[ToySample, ToySample]:
    """Two scenes asking the same question with different answers: the second is the first with the asked-about
    object given another attribute (another colour for a colour question, another shape for a shape question;
    the object stays unique, so the question still names exactly one object), the rest of the scene unchanged.
    A scene whose shape question has no free shape to swap in (all of a distinct-shape world's shapes present) is
    redrawn from the same stream."""
    while True:
        first = make_sample(rng, cfg, f"{pair_id}-a")
        index = next(i for i, o in enumerate(first.objects) if list(o.box) == first.bbox)
        target = first.objects[index]
        if first.kind == "color":
            options = [c for c in COLORS if c != target.color]
        else:
            taken = {o.shape for o in first.objects} if cfg.distinct_shapes else {target.shape}
            options = [s for s in cfg.shapes if s not in taken]
        if options:
            break
    pick = options[rng.integers(len(options))]
    swapped = (ToyObject(target.shape, pick, target.box) if first.kind == "color"
               else ToyObject(pick, target.color, target.box))
    objects = [swapped if i == index else o for i, o in enumerate(first.objects)]
    second = _question(objects, swapped, first.kind, cfg, f"{pair_id}-b", draw(objects, cfg.image_size))
    return first, second


def stream(split: str, world_seed: int = 0, draw: int = 0) -> np.random.Generator:
    """The random stream of one split of one world; `draw` picks one of its independent draws."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}")
    if world_seed < 0 or draw < 0:
        raise ValueError("world_seed and draw must be >= 0")
    return np.random.default_rng([world_seed, SPLITS[split], draw])


def generate(split: str, n: int, *, world_seed: int = 0, draw: int = 0,
             cfg: WorldConfig = WorldConfig()) -> list[ToySample]:
    rng = stream(split, world_seed, draw)
    return [make_sample(rng, cfg, f"{split}-{i:05d}") for i in range(n)]


def generate_pairs(split: str, n: int, *, world_seed: int = 0, draw: int = 0,
                   cfg: WorldConfig = WorldConfig()) -> list[tuple[ToySample, ToySample]]:
    """`n` pairs (`make_pair`) drawn from the split's stream `(world_seed, split, draw)`: deterministic, and
    apart from its first scene not the scenes `generate` draws from that stream."""
    rng = stream(split, world_seed, draw)
    return [make_pair(rng, cfg, f"{split}-pair-{i:05d}") for i in range(n)]


def write_split(directory: str | Path, split: str, n: int, *, world_seed: int = 0, draw: int = 0,
                cfg: WorldConfig = WorldConfig(), pairs: bool = False) -> Path:
    """PNG images + `<split>.jsonl` in lavit's sample format (id, image, question, answer, bbox, source, kind,
    prior_answer, objects); returns the JSONL path. Images go to `directory/images/`. `pairs=True` writes `n`
    scenes as n / 2 pairs (`make_pair`: same question, different answers), consecutive rows sharing a `pair` key."""
    if pairs and n % 2:
        raise ValueError(f"pairs=True needs an even n, got {n}")
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    path = directory / f"{split}.jsonl"
    if pairs:
        rows = [(s, f"{split}-pair-{i:05d}") for i, pair in enumerate(generate_pairs(
            split, n // 2, world_seed=world_seed, draw=draw, cfg=cfg)) for s in pair]
    else:
        rows = [(s, None) for s in generate(split, n, world_seed=world_seed, draw=draw, cfg=cfg)]
    with open(path, "w", encoding="utf-8") as f:
        for s, pair in rows:
            name = f"{s.id}.png"
            s.image.save(directory / "images" / name)
            row = {"id": s.id, "image": name, "question": s.question, "answer": s.answer, "bbox": s.bbox,
                   "source": f"toy-{s.kind}", "kind": s.kind, "prior_answer": s.prior_answer,
                   "objects": [asdict(o) for o in s.objects]}
            f.write(json.dumps(row | ({"pair": pair} if pair else {})) + "\n")
    return path

"""Single-shape scenes with *synthetic* teacher signals, for tests and `lavit bench train`.

Every image holds one coloured shape; `write_sft_set` stores scenes in the LaViT-SFT Parquet layout
with `a_traj` = the shape's box rasterised on the merged-token grid and `v_sem` = a fixed random
code per colour. They exercise training without a teacher; the real toy world, with a trained toy
teacher and real extracted signals, is `lavit.toyworld.world` (used by `lavit demo`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from lavit.models.grid import box_cells, merged_grid

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = ((112, 112), (140, 112), (112, 84), (168, 140))


@dataclass
class Scene:
    image: Image.Image
    shape: str
    color: str
    bbox: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels


def make_scene(rng: np.random.Generator) -> Scene:
    width, height = SIZES[rng.integers(len(SIZES))]
    image = Image.new("RGB", (width, height), (128, 128, 128))
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    side = int(rng.integers(24, 44))
    x1, y1 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    box = (x1, y1, x1 + side, y1 + side)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(x1, y1 + side), (x1 + side, y1 + side), (x1 + side // 2, y1)], fill=COLORS[color])
    return Scene(image, shape, color, box)


def box_map(bbox: tuple[int, int, int, int], image_size: tuple[int, int], grid_hw: tuple[int, int]) -> np.ndarray:
    """1 on merged-token cells whose centre lies in the box, a small floor elsewhere: [h*w]."""
    inside = box_cells(bbox, image_size, (1, *grid_hw))
    return np.where(inside, 1.0, 0.05).astype(np.float32)


def write_sft_set(directory: str | Path, num_samples: int, *, teacher_dim: int = 192, seed: int = 0) -> Path:
    """Write `num_samples` scenes as PNGs plus `sft.parquet` in the LaViT-SFT layout; returns the Parquet path."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    codes = {c: np.random.default_rng(1000 + i).standard_normal(teacher_dim) for i, c in enumerate(COLORS)}
    rows = []
    for i in range(num_samples):
        scene = make_scene(rng)
        name = f"images/{i:05d}.png"
        scene.image.save(directory / name)
        grid = merged_grid(scene.image.size)
        rows.append({
            "id": f"shape-{i:05d}",
            "image": name,
            "question": f"what color is the {scene.shape} ?",
            "answer": scene.color,
            "bbox": list(scene.bbox),
            "a_traj": box_map(scene.bbox, scene.image.size, grid[1:]).tolist(),
            "a_traj_grid": list(grid),
            "v_sem": (codes[scene.color] + 0.1 * rng.standard_normal(teacher_dim)).astype(np.float16).tolist(),
        })
    path = directory / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")
    return path

"""Builders for tiny copies of the benchmarks' published layouts (MMVP, BLINK, V*, MMStar).

Every image is real JPEG/PNG bytes made with PIL, with a size unique to its item so loaders can be
checked to hand back the right picture; parquet image cells are `{bytes, path}` structs as the
Hugging Face exports write them.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

MMVP_QUESTION = "Are the butterfly's wings closer to being open or closed?"
MMVP_OPTIONS = "(a) Open (b) Closed"
# (question, options, correct answer) for Index 1..8, i.e. pairs (1,2) (3,4) (5,6) (7,8).
# Pair (5,6) has (a) twice so that a constant-A model gets one whole pair right.
MMVP_ROWS = [
    (MMVP_QUESTION, MMVP_OPTIONS, "(a)"),
    (MMVP_QUESTION, MMVP_OPTIONS, "(b)"),
    ("Is the dog facing left or right?", "(a) Left (b) Right", "(b)"),
    ("Is the dog facing left or right?", "(a) Left (b) Right", "(a)"),
    ("Is the school bus, seen from the camera, driving towards or away?", "(a) Towards (b) Away", "(a)"),
    ("Is the school bus, seen from the camera, driving towards or away?", "(a) Towards (b) Away", "(a)"),
    ("Are there any words on the sign?", "(a) Yes (b) No", "(b)"),
    ("Are there any words on the sign?", "(a) Yes (b) No", "(a)"),
]

DEPTH_PROMPT = ("Two points are circled on the image, labeled by A and B beside each circle. Which point is closer "
                "to the camera?\nSelect from the following choices.\n(A) A is closer\n(B) B is closer")


def image_bytes(size: tuple[int, int], seed: int, fmt: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def png_claiming(size: tuple[int, int]) -> bytes:
    """A PNG whose header claims `size` (1-bit grey) while it holds 16 bytes of pixel data: PIL's size checks see
    the claim without anything being decoded, and decoding would fail as truncated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size[0], size[1], 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(16)))
            + chunk(b"IEND", b""))


def save_image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(size, seed, "PNG" if path.suffix == ".png" else "JPEG"))


def mmvp_size(index: int) -> tuple[int, int]:
    return 40 + index, 30 + index


def write_mmvp(root: Path, rows=MMVP_ROWS, header: str = "lndex", bom: bool = False) -> Path:
    """`Questions.csv` (quoted by csv where a question holds a comma) and `MMVP Images/{n}.jpg`."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "Questions.csv", "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([header, "Question", "Options", "Correct Answer"])
        for n, (question, options, answer) in enumerate(rows, 1):
            writer.writerow([n, question, options, answer])
    for n in range(1, len(rows) + 1):
        save_image(root / "MMVP Images" / f"{n}.jpg", mmvp_size(n), n)
    return root


def blink_size(task: str, row: int, k: int) -> tuple[int, int]:
    return 50 + 10 * row + k, 20 + len(task) + k


def blink_prompt(question: str, choices: list[str]) -> str:
    return "\n".join([question, "Select from the following choices.",
                      *(f"({'ABCDEFGH'[i]}) {c}" for i, c in enumerate(choices))])


def blink_schema() -> pa.Schema:
    return pa.schema([("idx", pa.string()), ("question", pa.string()), ("sub_task", pa.string()),
                      *((f"image_{k}", IMAGE_STRUCT) for k in range(1, 5)), ("choices", pa.list_(pa.string())),
                      ("answer", pa.string()), ("prompt", pa.string()), ("explanation", pa.string())])


def write_blink_task(root: Path, task: str, rows: list[dict], split: str = "val") -> Path:
    """`<task>/<split>-00000-of-00001.parquet`. A row: answer, choices, and optionally n_images (default 1),
    question, images (explicit cells overriding the generated ones)."""
    records = []
    for i, row in enumerate(rows, 1):
        question = row.get("question", f"{task} question {i}?")
        n_images = row.get("n_images", 1)
        cells = [{"bytes": image_bytes(blink_size(task, i, k), 100 * i + k, "PNG" if k % 2 else "JPEG"),
                  "path": f"{task}_{i}_{k}.png"} if k <= n_images else None for k in range(1, 5)]
        for k, cell in row.get("images", {}).items():
            cells[k - 1] = cell
        records.append({"idx": f"{split}_{task}_{i}", "question": question, "sub_task": task.replace("_", " "),
                        **{f"image_{k}": cells[k - 1] for k in range(1, 5)}, "choices": row["choices"],
                        "answer": row["answer"],
                        "prompt": row["prompt"] if "prompt" in row else blink_prompt(question, row["choices"]),
                        "explanation": ""})
    table = pa.Table.from_pylist(records, schema=blink_schema())
    (root / task).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / task / f"{split}-00000-of-00001.parquet")
    return root / task


DEPTH_CHOICES = ["A is closer", "B is closer"]
# Relative_Depth: A, B, A, A, B → 3 of 5 are (A).
DEPTH_ROWS = [{"choices": DEPTH_CHOICES, "answer": a, "prompt": DEPTH_PROMPT,
               "question": "Which point is closer to the camera?"} for a in ("(A)", "(B)", "(A)", "(A)", "(B)")]
IQ_CHOICES = ["image 1", "image 2", "image 3", "image 4"]
# IQ_Test: A, C, D, A with 2, 3, 4, 2 images → 2 of 4 are (A).
IQ_ROWS = [{"choices": IQ_CHOICES, "answer": a, "n_images": n,
            "question": "Which picture below the line continues the pattern?"}
           for a, n in (("(A)", 2), ("(C)", 3), ("(D)", 4), ("(A)", 2))]
# Relative_Reflectance: A, B, C → 1 of 3.
REFLECTANCE_ROWS = [{"choices": ["A is darker", "B is darker", "About the same"], "answer": a}
                    for a in ("(A)", "(B)", "(C)")]
# Spatial_Relation: A, A, B, A → 3 of 4.
SPATIAL_ROWS = [{"choices": ["yes", "no"], "answer": a} for a in ("(A)", "(A)", "(B)", "(A)")]


def write_blink(root: Path, tasks=None, with_test: bool = True) -> Path:
    tasks = tasks or {"Relative_Depth": DEPTH_ROWS, "IQ_Test": IQ_ROWS}
    for task, rows in tasks.items():
        write_blink_task(root, task, rows)
        if with_test:  # the hidden-answer split, which must never be read
            write_blink_task(root, task, [{**r, "answer": "hidden"} for r in rows] + [rows[0]], split="test")
    return root


VSTAR_SUFFIX = "Answer with the option's letter from the given choices directly."


def vstar_text(question: str, options: list[str]) -> str:
    return "\n".join([question, *(f"({'ABCD'[i]}) {o}" for i, o in enumerate(options)), VSTAR_SUFFIX])


# direct_attributes labels A, B, C, A, D → 2 of 5 are A; the two relative_position items (labels A, A)
# would make it 4 of 7 if they leaked in.
VSTAR_ROWS = [
    {"image": "direct_attributes/sa_4690.jpg", "category": "direct_attributes", "label": "A",
     "text": vstar_text("What is the material of the glove?", ["rubber", "cotton", "kevlar", "leather"])},
    {"image": "direct_attributes/sa_4691.jpg", "category": "direct_attributes", "label": "B",
     "text": vstar_text("What is the color of the umbrella?", ["red", "blue", "green", "white"])},
    {"image": "relative_position/sa_10.jpg", "category": "relative_position", "label": "A",
     "text": vstar_text("Is the dog on the left or right side of the bench?", ["left", "right"])},
    {"image": "direct_attributes/sa_4692.jpg", "category": "direct_attributes", "label": "C",
     "text": vstar_text("What is the color of the woman's bag?", ["black", "brown", "yellow", "pink"])},
    {"image": "direct_attributes/sa_4693.jpg", "category": "direct_attributes", "label": "A",
     "text": vstar_text("What is the material of the fence?", ["wood", "metal", "plastic", "stone"])},
    {"image": "relative_position/sa_11.jpg", "category": "relative_position", "label": "A",
     "text": vstar_text("Is the cup on the left or right side of the laptop?", ["left", "right"])},
    {"image": "direct_attributes/sa_4694.jpg", "category": "direct_attributes", "label": "D",
     "text": vstar_text("What is the color of the kite?", ["red", "orange", "purple", "blue"])},
]


def vstar_size(i: int) -> tuple[int, int]:
    return 64 + i, 48 + 2 * i


def vstar_annotation(i: int, row: dict) -> dict:
    """The annotation V* publishes beside image i (`sa_4690.json`): its target objects and one [x, y, w, h] pixel
    box each (two for relative_position), inside the fixture's image of `vstar_size(i)`."""
    targets = 2 if row["category"] == "relative_position" else 1
    question, *options = [line for line in row["text"].split("\n")[:-1]]
    return {"target_object": [f"object {j}" for j in range(targets)], "question": question,
            "options": [o[4:] for o in options], "bbox": [[3 + 30 * j + i, 2 + j, 20, 15 + j] for j in range(targets)]}


def write_vstar(root: Path, rows=VSTAR_ROWS, int_ids: bool = False, cells: dict | None = None,
                raw_lines: tuple[str, ...] = (), bom: bool = False, annotations: dict | None = None) -> Path:
    """`test_questions.jsonl`, its images and their annotation files; `cells` maps a row number to fields overriding
    the generated ones (images are made for the generated paths only), `raw_lines` are appended as written;
    `annotations` maps a row number to its annotation file's text (None: no file) instead of `vstar_annotation`."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        record = {"image": row["image"], "text": row["text"], "category": row["category"],
                  "question_id": i if int_ids else str(i), "label": row["label"]}
        lines.append(json.dumps({**record, **(cells or {}).get(i, {})}))
        save_image(root / row["image"], vstar_size(i), 300 + i)
        annotation = (annotations or {}).get(i, json.dumps(vstar_annotation(i, row)))
        if annotation is not None:
            (root / row["image"]).with_suffix(".json").write_text(annotation)
    (root / "test_questions.jsonl").write_text("\n".join([*lines, *raw_lines]) + "\n",
                                               encoding="utf-8-sig" if bom else "utf-8")
    return root


MMSTAR_QUESTION = ("Which option describe the object relationship in the image correctly?\nOptions: A: The suitcase "
                   "is on the book., B: The suitcase is beneath the cat., C: The suitcase is beneath the bed., "
                   "D: The suitcase is beneath the book.")
MMSTAR_MATH = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the "
               "end.\nQuestion: As shown in the figure, AB is the diameter of circle O. What is the measure of "
               "angle C?\nOptions: A: 25°, B: 50°, C: 65°, D: 90°")
# coarse perception: A, B, A → 2 of 3; math: C, A, D → 1 of 3; overall 3 of 6.
MMSTAR_ROWS = [
    ("coarse perception", "image scene and topic", MMSTAR_QUESTION, "A"),
    ("coarse perception", "image scene and topic", MMSTAR_QUESTION, "B"),
    ("coarse perception", "image style & quality", MMSTAR_QUESTION, "A"),
    ("math", "geometry", MMSTAR_MATH, "C"),
    ("math", "geometry", MMSTAR_MATH, "A"),
    ("math", "numeric commonsense", MMSTAR_MATH, "D"),
]


def mmstar_size(i: int) -> tuple[int, int]:
    return 70 + 3 * i, 40 + i


def mmstar_schema(binary_image: bool) -> pa.Schema:
    meta = pa.struct([("source", pa.string()), ("split", pa.string()), ("image_path", pa.list_(pa.string()))])
    return pa.schema([("index", pa.int64()), ("question", pa.string()),
                      ("image", pa.binary() if binary_image else IMAGE_STRUCT), ("answer", pa.string()),
                      ("category", pa.string()), ("l2_category", pa.string()), ("meta_info", meta)])


def write_mmstar(root: Path, rows=MMSTAR_ROWS, binary_image: bool = False, images: dict | None = None,
                 cells: dict | None = None) -> Path:
    """`mmstar.parquet`; `images` maps a row number to an explicit image cell, `cells` to other fields overriding
    the generated ones."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (category, l2, question, answer) in enumerate(rows):
        data = image_bytes(mmstar_size(i), 500 + i, "JPEG")
        cell = data if binary_image else {"bytes": data, "path": None}
        if images and i in images:
            cell = images[i]
        records.append({"index": i, "question": question, "image": cell, "answer": answer, "category": category,
                        "l2_category": l2, "meta_info": {"source": "MMBench", "split": "val",
                                                         "image_path": [f"images/{i}.jpg"]},
                        **(cells or {}).get(i, {})})
    pq.write_table(pa.Table.from_pylist(records, schema=mmstar_schema(binary_image)), root / "mmstar.parquet")
    return root


def write_paper_root(root: Path) -> Path:
    """The directory `--suite paper` expects: MMVP/, vstar_bench/, BLINK/ (four tasks), MMStar/."""
    write_mmvp(root / "MMVP")
    write_vstar(root / "vstar_bench")
    write_blink(root / "BLINK", {"Relative_Depth": DEPTH_ROWS, "IQ_Test": IQ_ROWS,
                                 "Relative_Reflectance": REFLECTANCE_ROWS, "Spatial_Relation": SPATIAL_ROWS})
    write_mmstar(root / "MMStar")
    return root

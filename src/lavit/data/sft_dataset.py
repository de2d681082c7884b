"""Training-side reader of the LaViT-SFT set (Parquet rows, DESIGN §3) feeding the student trainer.

Reads the filtered set of `lavit filter`, a raw `lavit extract` store (only rows with status 'ok') or
`lavit import-official` output. Columns used: `id`, `image` (path relative to the image root), `question`, the answer column
(default `answer`), and the teacher signals `v_sem` (list, D_teacher), `a_traj` (list, raw
aggregated map) with `a_traj_grid` ([t, h, w] merged-token grid of that map).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from lavit.data.examples import TrainingSample, build_example
from lavit.data.samples import Rejection, open_rgb, resolve_image
from lavit.data.signal_store import MANIFEST, shard_files

BASE_COLUMNS = ("id", "image", "question")
SIGNAL_COLUMNS = ("v_sem", "a_traj", "a_traj_grid")


def parquet_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # A lavit store keeps its shards under data/; any other folder is read as a folder of shards.
            found = shard_files(p) if (p / MANIFEST).is_file() else sorted(p.glob("*.parquet"))
            if not found:
                raise FileNotFoundError(f"no .parquet files in {p}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"training data {p} does not exist")
    if not files:
        raise ValueError("no training data given (set data=PATH)")
    return files


def read_sft_table(paths: list[str], answer_field: str, need_signals: bool, max_samples: int = 0) -> pa.Table:
    table = pa.concat_tables([pq.read_table(f) for f in parquet_files(paths)], promote_options="default")
    if "status" in table.column_names:  # a raw `lavit extract` store: rejected rows carry no signals
        table = table.filter(pc.equal(table.column("status"), "ok"))
    required = [*BASE_COLUMNS, answer_field, *(SIGNAL_COLUMNS if need_signals else ())]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"training data lacks columns {missing} (has {table.column_names})")
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError("training data has duplicate ids")
    if table.num_rows == 0:
        raise ValueError("training data is empty")
    return table.slice(0, max_samples) if max_samples else table


class LavitSftDataset(torch.utils.data.Dataset):
    """Rows → tokenised examples, built lazily (images are read when an item is asked for)."""

    def __init__(self, table: pa.Table, image_root: str, processor, latent_tokens: list[str], *,
                 system_prompt: str | None, answer_field: str = "answer", top_k: int = 8, with_signals: bool = True):
        self.rows = table.to_pylist()
        self.image_root = Path(image_root)
        self.processor = processor
        self.latent_tokens = latent_tokens
        self.system_prompt = system_prompt or None
        self.answer_field = answer_field
        self.top_k = top_k
        self.with_signals = with_signals
        self.images = self.check_rows()

    def check_rows(self) -> list[Path]:
        """Each row's image path, after checking every row before any training step: a missing or empty answer,
        an image path leaving the image root, or a missing image file stops here with every offending id."""
        problems: dict[str, list[str]] = defaultdict(list)
        images = []
        for row in self.rows:
            answer = row.get(self.answer_field)
            if not isinstance(answer, str) or not answer.strip():
                problems[f"missing or empty {self.answer_field}"].append(str(row["id"]))
            try:
                path = resolve_image(self.image_root, row["image"])
            except Rejection:
                problems[f"image path outside image_root {self.image_root}"].append(str(row["id"]))
                path = None
            if path is not None and not path.is_file():
                problems[f"image not found under {self.image_root}"].append(str(row["id"]))
            images.append(path)
        if problems:
            raise ValueError("training data cannot be used: " + "; ".join(
                f"{what} ({len(ids)} rows): {', '.join(ids)}" for what, ids in problems.items()))
        return images

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def teacher_dim(self) -> int:
        return len(self.rows[0]["v_sem"])

    def sample(self, index: int) -> TrainingSample:
        row = self.rows[index]
        sample = TrainingSample(id=str(row["id"]), image=open_rgb(self.images[index]), question=row["question"],
                                answer=row[self.answer_field])
        if self.with_signals:
            sample.v_sem = np.asarray(row["v_sem"], dtype=np.float32)
            sample.a_traj = np.asarray(row["a_traj"], dtype=np.float32)
            sample.a_traj_grid = tuple(int(x) for x in row["a_traj_grid"])
        return sample

    def __getitem__(self, index: int) -> dict:
        return build_example(self.processor, self.sample(index), self.latent_tokens,
                             system_prompt=self.system_prompt, top_k=self.top_k)

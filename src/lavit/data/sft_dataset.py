"""Training-side reader of the LaViT-SFT set (Parquet rows, DESIGN §3) feeding the student trainer.

Reads the filtered set of `lavit filter`, a raw `lavit extract` store (only rows with status 'ok') or
`lavit import-official` output. Columns used: `id`, `image` (path relative to the image root), `question`, the answer column
(default `answer`), and the teacher signals `v_sem` (list, D_teacher), `a_traj` (list, raw
aggregated map) with `a_traj_grid` ([t, h, w] merged-token grid of that map); for method=kd / lavit_kd the
teacher's top-k (`kd_tokens`, `kd_topk_tokens`, `kd_topk_logprobs`, `kd_temperature`), mapped to the student's
vocabulary by `lavit.data.vocab_alignment`.

Host memory: no row becomes Python objects up front (15 MB of Arrow made 207 MB of Python floats per 1 000
rows at 5 120-d V_sem, copied again page by page by every forked dataloader worker touching their reference
counts). The table is memory-mapped from a decoded Arrow copy, and each item converts only its own row.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from lavit.data.examples import TrainingSample, build_example, continuation_ids
from lavit.data.fingerprints import file_fingerprint, files_fingerprint, store_fingerprint
from lavit.data.samples import (
    DEFAULT_MAX_TEXT_TOKENS,
    ImageLimits,
    Rejection,
    TextLimits,
    check_text_fields,
    open_rgb,
    resolve_image,
)
from lavit.data.signal_store import (
    KD_TEMPERATURE,
    KD_TOKENS,
    KD_TOPK_LOGPROBS,
    KD_TOPK_TOKENS,
    MANIFEST,
    shard_files,
)
from lavit.data.vocab_alignment import KdAlignment, StudentVocab

BASE_COLUMNS = ("id", "image", "question")
SIGNAL_COLUMNS = ("v_sem", "a_traj", "a_traj_grid")
KD_TRAIN_COLUMNS = (KD_TOKENS, KD_TOPK_TOKENS, KD_TOPK_LOGPROBS, KD_TEMPERATURE)  # what method=kd reads
CHECK_BLOCK_ROWS = 4096
BAD_ROWS = ("error", "drop")
DECODE_BATCH_ROWS = 64  # ~1 MB of decoded signals at 5 120-d V_sem: what decoding holds on the heap at once


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


def data_fingerprint(paths: list[str]) -> dict[str, dict]:
    """What a run trains on, by content: per path of `data` (absolute), `{"sha256", "files", "bytes", "rows"}` —
    a lavit store's shards and manifest, another folder's .parquet files, or the file itself — with the rows its
    Parquet files hold (rejected rows of a raw store included)."""
    found = {}
    for path in map(Path, paths):
        files = parquet_files([str(path)])
        if not path.is_dir():
            fingerprint = {**file_fingerprint(path), "files": 1}
        elif (path / MANIFEST).is_file():
            fingerprint = store_fingerprint(path)
        else:
            fingerprint = files_fingerprint(files, path)
        fingerprint["rows"] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        found[str(path.resolve())] = fingerprint
    return found


def _decoded_batches(files: list[Path], target: pa.Schema, filter_status: bool):
    """The `target` columns of the rows training may read, shard by shard in order, DECODE_BATCH_ROWS at a time
    (a column a shard lacks reads as null). With `filter_status` (a raw `lavit extract` store: rejected rows carry
    no signals) only rows whose status is 'ok' are kept."""
    for path in files:
        shard = pq.ParquetFile(path, memory_map=True)
        present = set(shard.schema_arrow.names)
        wanted = [c for c in dict.fromkeys([*target.names, "status"]) if c in present]
        for batch in shard.iter_batches(batch_size=DECODE_BATCH_ROWS, columns=wanted, use_threads=False):
            if filter_status:
                status = batch.column("status") if "status" in present else pa.nulls(batch.num_rows, pa.string())
                batch = batch.filter(pc.equal(status, "ok"))
            yield pa.record_batch([batch.column(col.name).cast(col.type) if col.name in present
                                   else pa.nulls(batch.num_rows, col.type) for col in target], schema=target)


def read_sft_table(paths: list[str], answer_field: str, need_signals: bool, max_samples: int = 0,
                   need_kd: bool = False) -> pa.Table:
    """The columns training reads, as a table memory-mapped from a decoded copy of the shards (`need_kd`: the
    teacher's top-k too).

    The rows are decoded once into an Arrow IPC file in the temp folder (TMPDIR), which is unlinked as soon as it
    is mapped: the table lives in page cache, not on the heap, so it costs about its Arrow size in shared,
    reclaimable pages that forked dataloader workers read without copying, and disappears with the process.
    Duplicate ids and an empty set are refused over every shard, even past `max_samples`.
    """
    files = parquet_files(paths)
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="default")
    required = list(dict.fromkeys([*BASE_COLUMNS, answer_field, *(SIGNAL_COLUMNS if need_signals else ()),
                                   *(KD_TRAIN_COLUMNS if need_kd else ())]))
    missing = [c for c in required if c not in schema.names]
    if any(c in KD_TRAIN_COLUMNS for c in missing):
        absent = ", ".join(c for c in missing if c in KD_TRAIN_COLUMNS)
        raise ValueError(f"training data lacks the teacher's top-k ({absent}): it was extracted without kd_top_k "
                         "(or by a lavit before it). method=kd / lavit_kd train on the teacher's stored distribution: "
                         "re-extract with `lavit extract ... kd_top_k=8` (and filter again), or train method=lavit / "
                         "naive_sft on this data")
    if missing:
        raise ValueError(f"training data lacks columns {missing} (has {schema.names})")
    fd, cache = tempfile.mkstemp(prefix="lavit-sft-", suffix=".arrow")
    os.close(fd)
    try:
        target = pa.schema([schema.field(c) for c in required])
        with pa.OSFile(cache, "wb") as sink, pa.ipc.new_file(sink, target) as out:
            for batch in _decoded_batches(files, target, filter_status="status" in schema.names):
                out.write_batch(batch)
        table = pa.ipc.open_file(pa.memory_map(cache)).read_all()  # zero-copy: every buffer points into the map
    finally:
        os.unlink(cache)
    # The allocator would otherwise keep the freed decode buffers: measured 68 MiB at 16 000 rows of 5 120-d V_sem.
    pa.default_memory_pool().release_unused()
    if pc.count_distinct(table.column("id"), mode="all").as_py() != table.num_rows:
        raise ValueError("training data has duplicate ids")
    if table.num_rows == 0:
        raise ValueError("training data is empty")
    return table.slice(0, max_samples) if max_samples else table


class LavitSftDataset(torch.utils.data.Dataset):
    """Rows → tokenised examples, built lazily: an item reads its own row from the Arrow table (the float
    signals stay in Arrow buffers, which forked dataloader workers share instead of copying) and its image.

    `processor` is used by `__getitem__` and by the text check of `check_rows` (None: rows are checked without its
    tokenizer, as a benchmark of reading does).

    With `kd` (method=kd, lavit_kd) each item also carries the teacher's top-k at its answer positions, mapped to
    the student's ids: `kd_ids` [T, k] (−1: no student id, its mass joins the rest) and `kd_logprobs` [T, k], T =
    the answer tokens and the end-of-turn token, the positions the student's labels hold after its latents. A row
    whose answer does not tokenise, in the student's tokenizer, into the teacher's stored answer tokens is a bad row
    (kd_misaligned: its positions cannot be paired); `kd_stats` counts how the kept rows' top-k maps.
    """

    def __init__(self, table: pa.Table, image_root: str, processor, latent_tokens: list[str], *,
                 system_prompt: str | None, answer_field: str = "answer", top_k: int = 8, with_signals: bool = True,
                 bad_rows: str = "error", max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS, kd: bool = False):
        if bad_rows not in BAD_ROWS:
            raise ValueError(f"bad_rows must be one of {BAD_ROWS}, got {bad_rows!r}")
        if kd and processor is None:
            raise ValueError("the teacher's top-k is mapped through the student's tokenizer: kd needs the processor")
        self.table = table
        self.image_root = Path(image_root)
        self.processor = processor
        self.latent_tokens = latent_tokens
        self.system_prompt = system_prompt or None
        self.answer_field = answer_field
        self.top_k = top_k
        self.with_signals = with_signals
        # the student's tokenizer (its latent tokens included) reads the text: its special tokens are refused
        self.text_limits = (TextLimits.for_tokenizer(processor.tokenizer, max_text_tokens) if processor is not None
                            else None)
        self.kd = KdAlignment.of(table, StudentVocab.of(processor.tokenizer)) if kd else None
        self.rows, self.dropped = self.check_rows(bad_rows)  # [N] table rows trained on; records of the others
        self.kd_stats = self.kd.stats(table, self.rows) if self.kd is not None else None

    def check_rows(self, bad_rows: str = "error") -> tuple[np.ndarray, list[dict]]:
        """Check every row before any training step: an empty question, a missing or empty answer, a question or
        answer holding a special token of the student's tokenizer or over the token limit (`text_problem`), an
        image path leaving the image root, a missing image file, an image that does not decode (each is decoded
        once, in threads, as training will decode it) or (with signals) a missing teacher signal.
        `bad_rows='error'` stops here with every offending id; 'drop' returns the table rows to train on and a
        record {id, reason, detail} of each row left out."""
        problems: dict[int, list[tuple[str, str, str]]] = defaultdict(list)  # row → [(reason code, what, detail)]
        n = self.table.num_rows
        answers = (self.table.column(self.answer_field) if self.answer_field in self.table.column_names
                   else pa.nulls(n))
        to_decode: dict[Path, list[int]] = defaultdict(list)
        # A block of rows at a time, so that the Python strings this check needs never add up to the whole set.
        for start in range(0, n, CHECK_BLOCK_ROWS):
            block = slice(start, start + CHECK_BLOCK_ROWS)
            for row, question, answer, image in zip(range(start, n), self.table.column("question")[block].to_pylist(),
                                                    answers[block].to_pylist(),
                                                    self.table.column("image")[block].to_pylist()):
                if (problem := self.text_problem(question, answer)) is not None:
                    problems[row].append(problem)
                try:
                    path = resolve_image(self.image_root, image)
                except Rejection as err:
                    problems[row].append((err.reason, f"image path outside image_root {self.image_root}", err.detail))
                    continue
                try:
                    found = path.is_file()
                except OSError as err:  # e.g. a name over the filesystem's 255 bytes
                    problems[row].append(("image_unreadable", "image cannot be read", str(err)))
                    continue
                if not found:
                    problems[row].append(("image_missing", f"image not found under {self.image_root}", str(path)))
                    continue
                to_decode[path].append(row)
        for path, err in self._undecodable(list(to_decode)):
            for row in to_decode[path]:
                problems[row].append((err.reason, "image does not decode", str(err)))
        for name in SIGNAL_COLUMNS if self.with_signals else ():
            for row in np.flatnonzero(pc.is_null(self.table.column(name)).to_numpy()):
                problems[int(row)].append(("signal_missing", f"missing {name}", ""))
        if self.kd is not None:
            for row, reason in self.kd.problems.items():
                problems[row].append((reason, "missing teacher top-k" if reason == "signal_missing" else
                                      "teacher top-k lists not k entries per answer token", ""))
            for row, detail in self._kd_misaligned([r for r in range(n) if r not in problems], answers).items():
                problems[row].append(("kd_misaligned", f"{self.answer_field} does not tokenise into the teacher's "
                                      "stored answer tokens (method=kd distils the teacher's answer: set "
                                      "answer_field=teacher_answer)", detail))
        ids = self.table.column("id")
        names = {row: str(ids[row].as_py()) for row in problems}
        if problems and (bad_rows == "error" or len(problems) == n):
            groups: dict[str, list[str]] = defaultdict(list)
            for row, found in problems.items():
                for _, what, _ in found:
                    groups[what].append(names[row])
            hint = "no row is left" if bad_rows == "drop" else "bad_rows=drop trains on the others and records these"
            raise ValueError(f"training data cannot be used ({hint}): " + "; ".join(
                f"{what} ({len(group)} rows): {', '.join(group)}" for what, group in groups.items()))
        # each row left out once, with its first problem
        dropped = [{"id": names[row], "reason": found[0][0], "detail": found[0][2] or found[0][1]}
                   for row, found in sorted(problems.items())]
        keep = np.ones(n, dtype=bool)
        keep[list(problems)] = False
        return np.flatnonzero(keep), dropped

    def _kd_misaligned(self, rows: list[int], answers: pa.ChunkedArray) -> dict[int, str]:
        """The rows among `rows` whose answer's student tokens are not the teacher's stored answer tokens mapped to
        the student's ids (same tokens, same count), with what differs."""
        found = {}
        for start in range(0, len(rows), CHECK_BLOCK_ROWS):
            block = rows[start:start + CHECK_BLOCK_ROWS]
            texts = answers.take(pa.array(block, pa.int64())).to_pylist()
            for row, labelled in zip(block, continuation_ids(self.processor.tokenizer, self.latent_tokens, texts)):
                got = labelled[len(self.latent_tokens):]  # the answer and end-of-turn, as `build_example` labels them
                want = self.kd.answer_ids[self.kd.positions(row)]
                if len(got) != len(want) or not np.array_equal(np.asarray(got), want):
                    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                    found[row] = (f"{len(got)} student tokens vs {len(want)} teacher tokens, first difference at "
                                  f"token {at} (teacher ids mapped: {want.tolist()[:12]}; -1 = not in the student's "
                                  "vocabulary)")
        return found

    def text_problem(self, question, answer) -> tuple[str, str, str] | None:
        """(reason code, what, detail) for a row's text training cannot take, or None: an empty question, a missing
        or empty answer, else (with a processor) `check_text_fields` on both, as extraction checks them: a special
        token, too many tokens."""
        if not isinstance(question, str) or not question.strip():
            return "question_empty", "missing or empty question", ""
        if not isinstance(answer, str) or not answer.strip():
            return "answer_missing", f"missing or empty {self.answer_field}", ""
        if self.text_limits is None:
            return None
        try:
            check_text_fields({"question": question, self.answer_field: answer}, self.text_limits)
        except Rejection as err:
            what = (f"special token in question or {self.answer_field}" if err.reason == "special_token_in_text"
                    else f"question or {self.answer_field} over max_text_tokens={self.text_limits.max_tokens}")
            return err.reason, what, err.detail
        return None

    @staticmethod
    def _undecodable(paths: list[Path]) -> list[tuple[Path, Rejection]]:
        """The images among `paths` that do not decode through the shared decoding (size checked first)."""
        def failure(path: Path) -> Rejection | None:
            try:
                open_rgb(path, ImageLimits(min_side=1))
            except Rejection as err:
                return err
            return None

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes outside the GIL
            results = list(tqdm(pool.map(failure, paths), total=len(paths), desc="check training images",
                                unit="img", leave=False, disable=len(paths) < 256))
        return [(path, err) for path, err in zip(paths, results) if err is not None]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def teacher_dim(self) -> int:
        return len(self.table.column("v_sem")[0])

    def row(self, index: int) -> dict:
        """Item `index` as training reads it: the text fields as str, V_sem and A_traj as float32 arrays and the
        grid as a tuple of ints (with signals)."""
        index = int(self.rows[index])
        row = {name: self.table.column(name)[index].as_py() for name in ("id", "image", "question", self.answer_field)}
        row["id"] = str(row["id"])
        if self.with_signals:
            for name in ("v_sem", "a_traj"):
                # A list scalar's values are a zero-copy view of the row; only the float32 copy is new.
                row[name] = self.table.column(name)[index].values.to_numpy(zero_copy_only=False).astype(np.float32)
            row["a_traj_grid"] = tuple(int(x) for x in self.table.column("a_traj_grid")[index].as_py())
        return row

    def sample(self, index: int) -> TrainingSample:
        row = self.row(index)
        sample = TrainingSample(id=row["id"], image=open_rgb(resolve_image(self.image_root, row["image"])),
                                question=row["question"], answer=row[self.answer_field])
        if self.with_signals:
            sample.v_sem, sample.a_traj, sample.a_traj_grid = row["v_sem"], row["a_traj"], row["a_traj_grid"]
        return sample

    def __getitem__(self, index: int) -> dict:
        example = build_example(self.processor, self.sample(index), self.latent_tokens,
                                system_prompt=self.system_prompt, top_k=self.top_k)
        if self.kd is not None:
            example.update(self.kd_targets(index))
        return example

    def kd_targets(self, index: int) -> dict:
        """Item `index`'s teacher top-k, `kd_ids` [T, k] int64 and `kd_logprobs` [T, k] float32, paired with the T
        labels after its latents (`check_rows` kept only rows whose `continuation_ids`, which `build_example` labels,
        are the teacher's stored answer tokens)."""
        row = int(self.rows[index])
        span = self.kd.positions(row)
        logprobs = self.table.column(KD_TOPK_LOGPROBS)[row].values.to_numpy(zero_copy_only=False)  # [T*k]
        return {"kd_ids": torch.from_numpy(self.kd.topk_ids[span].astype(np.int64)),
                "kd_logprobs": torch.from_numpy(logprobs.astype(np.float32).reshape(-1, self.kd.top_k))}

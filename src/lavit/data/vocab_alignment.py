"""Teacher → student vocabulary alignment for distillation on the teacher's stored top-k (method=kd, lavit_kd).

A store keeps, per answer position, the teacher's token ids and their token strings (`kd_*` columns, see
`lavit.data.signal_store`). Training maps each string to the student's id of the same string — the two Qwen2.5-VL
heads of different sizes (152064 and 151936 rows over one 151665-token tokenizer) and tokenizers of other families
alike — and the teacher's end-of-turn token to the student's, whatever each is spelled. An entry that cannot be
mapped (an id past the teacher's tokenizer, stored without a string; a string the student's vocabulary lacks; a
second entry landing on an id already taken at that position) is not dropped: its teacher mass joins the `rest`
bucket of the loss (`lavit.training.losses.topk_partition`), and every such entry is counted (`KdAlignment.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lavit.data.signal_store import (
    KD_TEMPERATURE,
    KD_TOKENS,
    KD_TOPK_LOGPROBS,
    KD_TOPK_TOKENS,
)

UNMAPPED = -1


@dataclass
class StudentVocab:
    """A student tokenizer's token strings (its added tokens included) and its end-of-turn token."""

    ids: dict[str, int]
    eos_token: str
    eos_id: int

    @classmethod
    def of(cls, tokenizer) -> StudentVocab:
        vocab = dict(tokenizer.get_vocab())
        if len(set(vocab.values())) != len(vocab):
            raise ValueError("the student's tokenizer gives two token strings one id: teacher tokens cannot be mapped "
                             "to it one to one")
        return cls(vocab, tokenizer.eos_token, tokenizer.eos_token_id)

    def table(self, teacher_eos: str) -> dict[str, int]:
        """String → student id for a teacher whose end-of-turn token is `teacher_eos`: the student's vocabulary, with
        the teacher's end-of-turn mapped to the student's (both end the answer) and, where the two are spelled
        differently, the student's spelling unreachable (it is another token of the teacher's)."""
        if teacher_eos == self.eos_token:
            return self.ids
        table = dict(self.ids)
        del table[self.eos_token]
        table[teacher_eos] = self.eos_id
        return table

    def map_strings(self, tokens: pa.Array, teacher_eos: str) -> np.ndarray:
        """Student ids [n] int32 of `tokens` (strings, null for an id the teacher's tokenizer has no string for),
        UNMAPPED where there is none; each distinct string is looked up once."""
        encoded = pc.dictionary_encode(tokens)
        table = self.table(teacher_eos)
        lookup = np.array([table.get(s, UNMAPPED) for s in encoded.dictionary.to_pylist()] + [UNMAPPED],
                          dtype=np.int32)  # the last slot: null strings
        codes = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
        return lookup[codes]


def first_duplicates(ids: np.ndarray) -> np.ndarray:
    """[P, k] bool: entries whose id (not UNMAPPED) already appears earlier in their row."""
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids keep their order
    ranked = np.take_along_axis(ids, order, axis=1)
    repeat = np.zeros_like(ranked, dtype=bool)
    repeat[:, 1:] = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] != UNMAPPED)
    out = np.zeros_like(repeat)
    np.put_along_axis(out, order, repeat, axis=1)
    return out


def _list_lengths(column: pa.ChunkedArray) -> np.ndarray:
    """[rows] int64 lengths of a list column, 0 for a null row."""
    return pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def _flat_values(table: pa.Table, name: str) -> pa.Array:
    """The values of list column `name` of `table`, all rows concatenated."""
    chunks = [c.flatten() for c in table.column(name).chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], table.schema.field(name).type.value_type)


@dataclass
class KdAlignment:
    """The teacher's top-k of every usable row of a table, mapped to the student's ids.

    `topk_ids` [P, k] int32 over the P answer positions of the table (rows in order, each row's positions in order;
    UNMAPPED where an entry has no student id), `answer_ids` [P] the stored answer tokens mapped the same way,
    `starts` [rows + 1] each row's first position (a row without usable top-k has none: `problems` says why).
    `top_k`, `temperature`: the data's, one of each."""

    topk_ids: np.ndarray
    answer_ids: np.ndarray
    starts: np.ndarray
    outside_teacher: np.ndarray  # [P, k] bool: the teacher's tokenizer has no string for the id
    duplicate: np.ndarray  # [P, k] bool: the id an earlier entry of the position took
    problems: dict[int, str]  # table row → 'signal_missing' | 'kd_malformed'
    top_k: int
    temperature: float

    @classmethod
    def of(cls, table: pa.Table, vocab: StudentVocab) -> KdAlignment:
        """Map the `kd_*` columns of `table`. A row with a null column is `signal_missing`; one whose lists do not
        hold k entries per answer position is `kd_malformed`; both get no positions (they are bad rows)."""
        answers = _list_lengths(table.column(KD_TOKENS))
        entries = _list_lengths(table.column(KD_TOPK_TOKENS))
        values = _list_lengths(table.column(KD_TOPK_LOGPROBS))
        present = np.ones(table.num_rows, dtype=bool)
        for name in (KD_TOKENS, KD_TOPK_TOKENS, KD_TOPK_LOGPROBS, KD_TEMPERATURE):
            present &= ~pc.is_null(table.column(name)).to_numpy(zero_copy_only=False)
        sizes = {int(e // a) for e, a in zip(entries[present], answers[present]) if a and e % a == 0}
        if len(sizes) > 1:
            raise ValueError(f"the training data mixes teacher top-k sizes {sorted(sizes)} (entries per answer "
                             "position): train on data extracted with one kd_top_k")
        top_k = sizes.pop() if sizes else 0
        usable = present & (answers > 0) & (top_k > 0) & (entries == answers * top_k) & (values == entries)
        temperatures = set(pc.unique(table.column(KD_TEMPERATURE).filter(pa.array(usable))).to_pylist())
        if len(temperatures) > 1:
            raise ValueError(f"the training data mixes teacher temperatures {sorted(temperatures)}: train on data "
                             "extracted with one kd_temperature")
        problems = {int(r): "signal_missing" if not present[r] else "kd_malformed" for r in np.flatnonzero(~usable)}
        starts = np.concatenate([[0], np.cumsum(answers * usable)])
        kept = table.filter(pa.array(usable))
        tokens, topk = _flat_values(kept, KD_TOKENS), _flat_values(kept, KD_TOPK_TOKENS)
        answer_ids = np.full(len(tokens), UNMAPPED, dtype=np.int32)
        topk_ids = np.full((len(tokens), top_k), UNMAPPED, dtype=np.int32)
        # each row's last stored token is its teacher's end-of-turn: rows are mapped per end-of-turn (per teacher)
        ends = np.cumsum(answers[usable]) - 1  # [usable rows] the flat position of each row's last token
        eos = np.array(tokens.take(pa.array(ends, pa.int64())).to_pylist(), dtype=object)
        row_of_position = np.repeat(np.arange(len(ends)), answers[usable])  # [P]
        for spelling in sorted(set(eos)):
            positions = np.flatnonzero(eos[row_of_position] == spelling)
            answer_ids[positions] = vocab.map_strings(tokens.take(pa.array(positions, pa.int64())), spelling)
            flat = (positions[:, None] * top_k + np.arange(top_k)).ravel()
            topk_ids[positions] = vocab.map_strings(topk.take(pa.array(flat, pa.int64())), spelling).reshape(-1, top_k)
        outside = pc.is_null(topk).to_numpy(zero_copy_only=False).reshape(len(tokens), top_k)
        duplicate = first_duplicates(topk_ids)
        topk_ids[duplicate] = UNMAPPED
        return cls(topk_ids, answer_ids, starts, outside, duplicate, problems, top_k,
                   temperatures.pop() if temperatures else 1.0)

    def positions(self, row: int) -> slice:
        """The flat answer positions of table row `row`."""
        return slice(int(self.starts[row]), int(self.starts[row + 1]))

    def stats(self, table: pa.Table, rows: np.ndarray) -> dict:
        """How the teacher's top-k of the table rows `rows` (those trained on) maps: entries, unmapped entries by
        cause, and the teacher mass they carry into the rest bucket (from the table's `kd_topk_logprobs`)."""
        positions = np.concatenate([np.arange(self.starts[r], self.starts[r + 1]) for r in rows] or
                                   [np.zeros(0, dtype=np.int64)])
        with_positions = np.flatnonzero(np.diff(self.starts))  # the usable rows (each has ≥ 1 answer position)
        logprobs = _flat_values(table.take(pa.array(with_positions, pa.int64())), KD_TOPK_LOGPROBS)
        p = np.exp(logprobs.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(self.answer_ids), self.top_k)[
            positions])  # [P, k]
        unmapped = self.topk_ids[positions] == UNMAPPED  # [P, k]
        outside, duplicate = self.outside_teacher[positions], self.duplicate[positions]
        unmapped_mass = (p * unmapped).sum(axis=1)  # [P]
        mean = (lambda x: float(x.mean()) if x.size else 0.0)  # noqa: E731
        return {"positions": int(len(positions)), "top_k": self.top_k, "temperature": self.temperature,
                "entries": int(unmapped.size), "unmapped_entries": int(unmapped.sum()),
                "unmapped_outside_teacher_tokenizer": int(outside.sum()),
                "unmapped_not_in_student_vocab": int((unmapped & ~outside & ~duplicate).sum()),
                "unmapped_duplicate_id": int(duplicate.sum()),
                "positions_all_unmapped": int(unmapped.all(axis=1).sum()) if unmapped.size else 0,
                "unmapped_mass_mean": mean(unmapped_mass), "unmapped_mass_max": float(unmapped_mass.max(initial=0.0)),
                "teacher_mass_outside_top_k_mean": mean((1 - p.sum(axis=1)).clip(min=0))}

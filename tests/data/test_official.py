"""`import-official` on a tiny copy of the authors' LaViT-15k layout (results JSON, V_top .pt, attention JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lavit.cli import main
from lavit.data.official import import_official
from lavit.data.signal_store import read_manifest, read_store
from lavit.models.grid import merged_grid

MIN_PIXELS, MAX_PIXELS, DIM = 3136, 16 * 28 * 28, 16
SETTINGS = {"teacher_dim": DIM, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
AUTHORS_DIR = "/nonexistent/lavit_authors/features"  # where the published JSON says the features are


def _mark(path):
    """Run only if a V_top payload is unpickled without weights_only: leaves a file behind."""
    open(path, "w").close()
    return "executed"


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _mark, (self.marker,)


class Layout:
    """Builds records, images and feature files under tmp_path; remembers what each good row must hold."""

    def __init__(self, tmp_path, features_elsewhere=False):
        self.root = tmp_path
        self.images, self.features = tmp_path / "images", tmp_path / "features"
        self.features.mkdir()
        self.listed = AUTHORS_DIR if features_elsewhere else str(self.features)
        self.records, self.expected = [], {}

    def add(self, size, *, dataset="docvqa", v_dim=DIM, v_extra=0, p_extra=0, nan_p=False, nan_v=False,
            save_v=True, save_image=True, fmt="png", v_object=None, v_scale=1.0):
        i = len(self.records)
        grid = merged_grid(size, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        n = grid[0] * grid[1] * grid[2]
        rel = f"{dataset}/img_{i}.{fmt}"
        if save_image:
            (self.images / dataset).mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(self.images / rel)
        v_top = (v_scale * torch.randn(n + v_extra, v_dim, generator=torch.Generator().manual_seed(i))).to(torch.bfloat16)
        if nan_v:
            v_top[1, 3] = float("nan")
        if v_object is not None:
            torch.save(v_object, self.features / f"vtop_{i}.pt")
        elif save_v:
            torch.save(v_top, self.features / f"vtop_{i}.pt")
        raw = np.random.default_rng(100 + i).random(n + p_extra)
        p_t = (raw - raw.min()) / (raw.max() - raw.min())  # min-max scaled, as published
        if nan_p:
            p_t[2] = float("nan")
        steps = [{"p_t": p_t.tolist(), "p_topk_idx": np.argsort(-raw)[:4].tolist(), "tau_used": "attention",
                  "method": "attention_based"}]
        (self.features / f"attn_{i}.json").write_text(json.dumps({"steps": steps}))
        record = {"question_id": 5000 + i, "dataset": dataset, "question": f"What is in region {i}?",
                  "ground_truth_enriched": f"Answer number {i}.", "image_relative_path": rel,
                  "v_top_path_abs": f"{self.listed}/vtop_{i}.pt", "attention_path_abs": f"{self.listed}/attn_{i}.json"}
        self.records.append(record)
        self.expected[f"{dataset}-{5000 + i}"] = {"size": list(size), "grid": list(grid), "p_t": p_t, "v_top": v_top}
        return f"{dataset}-{5000 + i}"

    def write(self):
        path = self.root / "lavit_15k_for_training.json"
        path.write_text(json.dumps({"results": self.records}))
        return path

    def run(self, out="out", **kwargs):
        result = import_official(str(self.write()), str(self.images), str(self.root / out), **{**SETTINGS, **kwargs})
        rows = read_store(self.root / out).to_pylist()
        return result, {r["id"]: r for r in rows}, rows


def check_good_row(row, expected):
    assert row["status"] == "ok" and row["reject_reason"] is None
    assert row["image_size"] == expected["size"]
    assert row["a_traj_grid"] == expected["grid"]
    a_traj = np.asarray(row["a_traj"], dtype=np.float64)
    np.testing.assert_allclose(a_traj, expected["p_t"] / expected["p_t"].sum(), rtol=1e-6, atol=1e-8)
    assert a_traj.sum() == pytest.approx(1.0, abs=1e-5)
    assert a_traj.min() == 0.0  # the min-max minimum stays zero
    v_sem = np.asarray(row["v_sem"], dtype=np.float32)
    assert v_sem.shape == (DIM,)
    np.testing.assert_allclose(v_sem, expected["v_top"].float().mean(0).numpy(), rtol=1e-3, atol=1e-3)
    assert row["s_focus"] is None and row["bbox"] is None and row["teacher_answer"] is None


def test_good_rows(tmp_path):
    lay = Layout(tmp_path)
    ids = [lay.add((112, 84)), lay.add((56, 140), dataset="flickr30k"), lay.add((84, 84), fmt="jpg"),
           lay.add((140, 56), dataset="gqa")]
    result, by_id, rows = lay.run()
    assert result == {"records": 4, "skipped_already_stored": 0, "ok": 4, "rejected": 0}
    assert [r["id"] for r in rows] == ids == ["docvqa-5000", "flickr30k-5001", "docvqa-5002", "gqa-5003"]
    assert [r["a_traj_grid"] for r in rows] == [[1, 3, 4], [1, 5, 2], [1, 3, 3], [1, 2, 5]]
    for i, row in enumerate(rows):
        check_good_row(row, lay.expected[row["id"]])
        assert row["index"] == i
        assert row["answer"] == f"Answer number {i}." and row["question"] == f"What is in region {i}?"
        assert row["image"] == lay.records[i]["image_relative_path"]
        assert row["source"] == lay.records[i]["dataset"]


def test_rejections_carry_reason_codes(tmp_path):
    lay = Layout(tmp_path)
    good = lay.add((112, 84))
    cases = {
        lay.add((112, 84), v_dim=DIM + 8): "v_top_dim",
        lay.add((112, 84), save_v=False): "v_top_missing",
        lay.add((112, 84), p_extra=1): "grid_mismatch",
        lay.add((112, 84), v_extra=2): "grid_mismatch",
        lay.add((112, 84), nan_p=True): "signal_nonfinite",
        lay.add((56, 140), nan_v=True): "signal_nonfinite",
        lay.add((112, 84), save_image=False): "image_missing",
    }
    result, by_id, rows = lay.run()
    assert result["ok"] == 1 and result["rejected"] == len(cases) and len(rows) == 1 + len(cases)
    check_good_row(by_id[good], lay.expected[good])
    for sample_id, code in cases.items():
        row = by_id[sample_id]
        assert row["status"] == "rejected", sample_id
        assert row["reject_reason"].split(": ")[0] == code, row["reject_reason"]
        assert len(row["reject_reason"]) > len(code) + 2  # "code: detail"
        assert row["a_traj"] is None and row["v_sem"] is None and row["a_traj_grid"] is None
        assert row["answer"] == lay.records[row["index"]]["ground_truth_enriched"]
    assert "got (12, 24)" in by_id["docvqa-5001"]["reject_reason"]
    assert "p_t has 13 values, V_top 12 rows" in by_id["docvqa-5003"]["reject_reason"]
    assert "img_7.png" in by_id["docvqa-5007"]["reject_reason"]
    counts = read_manifest(tmp_path / "out")["counts"]
    assert counts["rows"] == 8 and counts["ok"] == 1
    assert counts["rejected_by_reason"] == {"grid_mismatch": 2, "image_missing": 1, "signal_nonfinite": 2,
                                            "v_top_dim": 1, "v_top_missing": 1}


def test_features_root_redirects_absolute_paths(tmp_path):
    lay = Layout(tmp_path, features_elsewhere=True)
    ids = [lay.add((112, 84)), lay.add((56, 140))]
    assert lay.records[0]["v_top_path_abs"] == f"{AUTHORS_DIR}/vtop_0.pt"
    _, by_id, _ = lay.run("without_root")
    assert {r["reject_reason"].split(": ")[0] for r in by_id.values()} == {"v_top_missing"}
    assert AUTHORS_DIR in by_id[ids[0]]["reject_reason"]
    result, by_id, _ = lay.run("with_root", features_root=str(lay.features))
    assert result["ok"] == 2
    for sample_id in ids:
        check_good_row(by_id[sample_id], lay.expected[sample_id])


def test_pickled_object_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "payload_ran"
    lay = Layout(tmp_path)
    bad = lay.add((112, 84), v_object={"x": Payload(str(marker))})
    good = lay.add((112, 84))
    result, by_id, _ = lay.run()
    assert result["ok"] == 1 and result["rejected"] == 1
    assert by_id[bad]["reject_reason"].startswith("v_top_unreadable: ")
    assert "vtop_0.pt" in by_id[bad]["reject_reason"]
    assert not marker.exists()
    check_good_row(by_id[good], lay.expected[good])
    # The payload is live: an unsafe load would have run it.
    torch.load(lay.features / "vtop_0.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_v_sem_overflowing_float16_is_never_stored_as_ok(tmp_path):
    lay = Layout(tmp_path)
    big = lay.add((112, 84), v_scale=0.0)
    lay.expected[big]["v_top"].fill_(1e5)  # finite in bf16, beyond float16's 65504
    torch.save(lay.expected[big]["v_top"], lay.features / "vtop_0.pt")
    _, by_id, _ = lay.run()
    row = by_id[big]
    assert row["status"] == "rejected" and row["reject_reason"].startswith("signal_nonfinite")


def test_rerun_resumes_and_settings_are_pinned(tmp_path):
    lay = Layout(tmp_path)
    lay.add((112, 84))
    lay.add((56, 140), save_v=False)
    lay.add((84, 84))
    first, _, rows = lay.run()
    shards = sorted(p.name for p in (tmp_path / "out" / "data").glob("*.parquet"))
    assert shards
    again, _, rows_again = lay.run()
    assert again == {"records": 3, "skipped_already_stored": 3, "ok": 0, "rejected": 0}
    assert rows_again == rows and len(rows) == 3
    assert sorted(p.name for p in (tmp_path / "out" / "data").glob("*.parquet")) == shards
    lay.add((140, 56))  # a record added later is the only one converted
    more, by_id, rows_more = lay.run()
    assert more == {"records": 4, "skipped_already_stored": 3, "ok": 1, "rejected": 0}
    assert [r["id"] for r in rows_more] == ["docvqa-5000", "docvqa-5001", "docvqa-5002", "docvqa-5003"]
    with pytest.raises(ValueError, match="different settings"):
        lay.run(teacher_dim=DIM * 2)
    assert len(read_store(tmp_path / "out")) == 4


def test_cli_import_official(tmp_path, capsys):
    lay = Layout(tmp_path)
    lay.add((112, 84))
    lay.add((56, 140), v_dim=8)
    data = lay.write()
    args = ["import-official", "--data", str(data), "--image-root", str(lay.images), "--out", str(tmp_path / "cli"),
            "--teacher-dim", str(DIM), "--min-pixels", str(MIN_PIXELS), "--max-pixels", str(MAX_PIXELS)]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"records": 2, "skipped_already_stored": 0, "ok": 1, "rejected": 1}
    assert read_store(tmp_path / "cli").column("status").to_pylist() == ["ok", "rejected"]
    missing = ["import-official", "--data", str(tmp_path / "absent.json"), "--image-root", str(lay.images),
               "--out", str(tmp_path / "cli2")]
    assert main(missing) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "cli2").exists()

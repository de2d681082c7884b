"""`lavit eval --engine vllm`, `lavit extract engine=vllm` (in phases, resumed after a kill in either),
`lavit filter engine=vllm` and `lavit bench extract --vllm`: the same records as with the transformers engine."""

from __future__ import annotations

import json

import pytest
from vllm_models import export_redrawn_student, save_redrawn_teacher

from lavit.cli import main
from lavit.data.signal_store import read_store
from lavit.inference import engines as engines_module
from lavit.teacher import extractor as extractor_module
from lavit.teacher.bench import bench_answers
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import run_extract
from lavit.teacher.filter import run_filter
from lavit.teacher.filter_config import FilterConfig
from tests.eval.fixtures import write_mmvp
from tests.teacher.test_extract import write_samples

VLLM_ARGS = ["--enforce-eager", "--max-model-len", "1024", "--dtype", "float32"]
VLLM_CFG = {"vllm_enforce_eager": True, "vllm_max_model_len": 1024, "dtype": "float32"}


class Killed(Exception):
    """Stands for the process being killed at this point."""


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "student"
    export_redrawn_student(directory)
    return directory


def read_eval(out) -> tuple[list[dict], dict]:
    folder = out / "mmvp"
    records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    summary = json.loads((folder / "summary.json").read_text())
    return records, {k: v for k, v in summary.items() if k not in ("settings", "wall_seconds")}


def test_eval_engine_vllm_equals_transformers(student, tmp_path, capsys):
    data = write_mmvp(tmp_path / "MMVP")
    common = ["eval", "--model", str(student), "--benchmark", "mmvp", "--data-root", str(data),
              "--max-new-tokens", "6", "--batch-size", "3"]
    assert main([*common, "--out", str(tmp_path / "hf"), "--latent-mode", "forced"]) == 0
    assert main([*common, "--out", str(tmp_path / "vllm"), "--latent-mode", "forced", "--engine", "vllm",
                 *VLLM_ARGS]) == 0
    hf, vllm = read_eval(tmp_path / "hf"), read_eval(tmp_path / "vllm")
    assert vllm == hf
    assert len({r["raw_output"] for r in hf[0]}) > 2  # the answers vary, so equal records mean something
    settings = json.loads((tmp_path / "vllm" / "mmvp" / "summary.json").read_text())["settings"]
    assert settings["engine"] == "vllm" and settings["latent_mode"] == "forced" and settings["dtype"] == "float32"
    # what only lavit's attention function does is refused before vLLM starts
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "masked"), "--latent-mode", "masked", "--engine", "vllm",
                 *VLLM_ARGS]) == 2
    assert "latent mode 'masked' hides the latents" in capsys.readouterr().err


def extract_config(root, out: str, **kw) -> ExtractConfig:
    values = dict(samples=str(root / "samples.jsonl"), image_root=str(root / "images"), out=str(root / out),
                  teacher=str(root / "teacher"), batch_size=2, rows_per_file=2, max_new_tokens=6,
                  max_image_pixels=400 * 400, dtype="float32")
    values.update(kw)
    return ExtractConfig(**values)


def rows(out) -> list[dict]:
    return sorted(read_store(out).to_pylist(), key=lambda r: r["index"])


def test_extract_engine_vllm_in_phases_resumes_to_the_transformers_store(tmp_path, monkeypatch):
    write_samples(tmp_path, 6, bad=True)
    save_redrawn_teacher(tmp_path / "teacher")
    run_extract(extract_config(tmp_path, "hf"))
    reference = rows(tmp_path / "hf")
    answers = [r["teacher_answer"] for r in reference if r["status"] == "ok"]
    assert len(answers) == 6 and len(set(answers)) > 3  # answers vary with image and question

    # killed in the answer phase after its first vLLM call (one group of 2 per call): the journal keeps that call
    generate = engines_module.VllmEngine.generate
    calls = []

    def dying_generate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return generate(self, *args, **kwargs)

    vllm_cfg = extract_config(tmp_path, "vllm", engine="vllm", vllm_batch_size=2, **VLLM_CFG)
    monkeypatch.setattr(engines_module.VllmEngine, "generate", dying_generate)
    with pytest.raises(Killed):
        run_extract(vllm_cfg)
    journal = (tmp_path / "vllm" / "teacher_answers-w000of001.jsonl").read_text().splitlines()
    answered = [json.loads(line) for line in journal]
    assert len(answered) < 8 and 0 < sum(len(g["answers"]) for g in answered) < 6  # 8 groups; one call kept
    assert not list((tmp_path / "vllm" / "data").glob("*.parquet"))  # no probe pass yet
    monkeypatch.setattr(engines_module.VllmEngine, "generate", generate)
    run_extract(vllm_cfg)
    assert rows(tmp_path / "vllm") == reference

    # killed in the probe pass after its first group: the rerun answers nothing again (vLLM never starts)
    signals = extractor_module.SignalExtractor.signals
    passes = []

    def dying_signals(self, *args, **kwargs):
        passes.append(1)
        if len(passes) == 2:
            raise Killed
        return signals(self, *args, **kwargs)

    phased = extract_config(tmp_path, "phased", engine="vllm", **VLLM_CFG)
    monkeypatch.setattr(extractor_module.SignalExtractor, "signals", dying_signals)
    with pytest.raises(Killed):
        run_extract(phased)
    kept = len(read_store(tmp_path / "phased").to_pylist())
    assert 0 < kept < len(reference)
    monkeypatch.setattr(extractor_module.SignalExtractor, "signals", signals)

    def no_engine(*args, **kwargs):
        raise AssertionError("the answer phase ran again")

    monkeypatch.setattr(extractor_module, "VllmEngine", no_engine)
    result = run_extract(phased)
    assert rows(tmp_path / "phased") == reference and result["skipped_already_stored"] == kept
    # the engine is a setting of the store: resuming it on the other engine is refused
    with pytest.raises(ValueError, match="engine"):
        run_extract(extract_config(tmp_path, "phased"))


def test_filter_engine_vllm_equals_transformers(tmp_path):
    write_samples(tmp_path, 6, bad=False)
    save_redrawn_teacher(tmp_path / "teacher")
    run_extract(extract_config(tmp_path, "signals"))
    common = dict(signals=str(tmp_path / "signals"), stages=["correctness", "difficulty"], matcher="judge",
                  judge="teacher", max_new_tokens=6, dtype="float32")
    hf = run_filter(FilterConfig(out=str(tmp_path / "hf"), **common))
    vllm = run_filter(FilterConfig(out=str(tmp_path / "vllm"), engine="vllm", vllm_enforce_eager=True,
                                   vllm_max_model_len=1024, judge_cache=str(tmp_path / "vllm_cache.jsonl"), **common))
    assert vllm["verdicts"] == hf["verdicts"] and vllm["dropped_by_reason"] == hf["dropped_by_reason"]
    assert vllm["judge"]["asked"] == hf["judge"]["asked"] > 0  # its own cache: the vLLM judge answered
    hf_cache = (tmp_path / "hf.judge_cache.jsonl").read_text()
    assert (tmp_path / "vllm_cache.jsonl").read_text() == hf_cache
    dropped = {f: [json.loads(line) for line in (tmp_path / f / "dropped.jsonl").read_text().splitlines()]
               for f in ("hf", "vllm")}
    assert dropped["vllm"] == dropped["hf"]


def test_bench_answers_measures_both_engines_on_equal_answers():
    result = bench_answers(num_prompts=4, batch_size=2, max_new_tokens=4, config="tiny", enforce_eager=True)
    assert result["answers_equal"] and result["answers_differing"] == 0
    assert result["ratio_vllm_over_transformers"] == pytest.approx(
        result["answers_per_second"]["vllm"] / result["answers_per_second"]["transformers"])
    assert all(v > 0 for v in result["seconds"].values())

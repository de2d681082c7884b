"""The generation-engine interface without vLLM: transformers behind it, and every vLLM request refused clearly
where vLLM is absent or cannot be exact (the vLLM runs themselves: tests/vllm_tests, `make test-vllm`)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from lavit.eval.models import GenerativeModel
from lavit.inference.engines import TransformersEngine, build_engine, check_engine, import_vllm
from lavit.inference.generate import generate_answers
from lavit.models.checkpoint import load_for_inference
from lavit.teacher.extract_config import ExtractConfig
from lavit.teacher.extractor import run_extract
from lavit.teacher.filter_config import FilterConfig


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not


def test_transformers_engine_answers_as_generate_answers():
    model, processor = load_for_inference("tiny", seed=2)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (84, 112, 3), dtype=np.uint8))
    ask = {"latent_tokens": [], "mode": "none", "max_new_tokens": 3}
    engine = build_engine("transformers", "tiny", seed=2)
    assert isinstance(engine, TransformersEngine) and engine.dtype == "float32"
    assert engine.generate([image], ["what color ?"], **ask) == generate_answers(model, processor, [image],
                                                                                 ["what color ?"], **ask)


def test_engine_names_and_options_are_checked():
    with pytest.raises(ValueError, match="engine must be one of"):
        check_engine("tgi")
    with pytest.raises(ValueError, match="tensor_parallel_size is vLLM's"):
        build_engine("transformers", "tiny", tensor_parallel_size=2)
    with pytest.raises(ValueError, match="device_map is transformers'"):
        build_engine("vllm", "tiny", device_map="auto")
    with pytest.raises(ValueError, match="tensor_parallel_size is vLLM's"):
        ExtractConfig(tensor_parallel_size=2)
    with pytest.raises(ValueError, match="engine must be one of"):
        ExtractConfig(engine="tgi")
    ExtractConfig(engine="vllm", tensor_parallel_size=2, device_map="auto")  # the probe pass keeps device_map
    with pytest.raises(ValueError, match="device_map is transformers'"):
        FilterConfig(engine="vllm", device_map="auto")


def test_vllm_absent_is_a_clear_error_before_anything_is_written(no_vllm, tmp_path):
    with pytest.raises(ImportError, match="engine=vllm needs the vllm package"):
        import_vllm()
    with pytest.raises(ImportError, match="make test-vllm"):
        build_engine("vllm", "tiny")
    (tmp_path / "samples.jsonl").write_text('{"id": "a", "image": "a.png", "question": "q ?", "answer": "red"}\n')
    cfg = ExtractConfig(samples=str(tmp_path / "samples.jsonl"), image_root=str(tmp_path), out=str(tmp_path / "out"),
                        teacher="tiny-teacher", engine="vllm")
    with pytest.raises(ImportError, match="needs the vllm package"):
        run_extract(cfg)
    assert not (tmp_path / "out").exists()


def test_the_cli_says_vllm_is_missing_without_a_traceback(no_vllm, tmp_path, capsys):
    from lavit.cli import main

    (tmp_path / "samples.jsonl").write_text('{"id": "a", "image": "a.png", "question": "q ?", "answer": "red"}\n')
    assert main(["extract", f"samples={tmp_path / 'samples.jsonl'}", f"image_root={tmp_path}",
                 f"out={tmp_path / 'out'}", "teacher=tiny-teacher", "engine=vllm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lavit extract: error: engine=vllm needs the vllm package") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_what_needs_lavit_attention_refuses_vllm_before_it_starts(no_vllm, export_tiny_student, tmp_path):
    export_tiny_student(tmp_path / "student")
    # refused on the mode, before vLLM would be imported (it is absent here)
    with pytest.raises(ValueError, match="latent mode 'masked' hides the latents"):
        GenerativeModel(str(tmp_path / "student"), mode="masked", engine="vllm")
    with pytest.raises(ValueError, match="tensor_parallel_size is vLLM's"):
        GenerativeModel(str(tmp_path / "student"), tensor_parallel_size=2)
    with pytest.raises(ValueError, match="device_map is transformers'"):
        GenerativeModel(str(tmp_path / "student"), engine="vllm", device_map="auto")

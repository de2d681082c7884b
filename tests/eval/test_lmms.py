"""lmms-eval plugin: the adapter logic (no lmms-eval needed) and the real lmms-eval interface.

The test environment installs lmms-eval without its ~150 dependencies (see the Makefile): enough for
its model base class, `Instance` and model registry, which is what a plugin touches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lavit.eval.lmms_adapter import LmmsGenerator, Request, cut_at_stop, parse_model_args, process_placement
from lavit.eval.models import GenerativeModel


@pytest.fixture(scope="module")
def student(tmp_path_factory, export_tiny_student):
    directory = tmp_path_factory.mktemp("lmms") / "student"
    export_tiny_student(directory)
    return directory


def requests() -> list[Request]:
    red, blue = Image.new("RGB", (112, 84), (220, 30, 30)), Image.new("RGB", (84, 112), (30, 30, 220))
    return [Request("what color is the circle ?", [red], {"max_new_tokens": 3, "until": ["."]}),
            Request("which image is red ? (A) (B)", [red, blue], {"max_new_tokens": 2}),
            Request("what color is it ?", [blue], {"max_new_tokens": 3, "temperature": 0})]


def test_model_args_and_stop_strings():
    args = parse_model_args("dir", latent_mode="masked", latent_tokens="<lvr1>|<lvr2>", batch_size="4")
    assert args["latent_tokens"] == ["<lvr1>", "<lvr2>"] and args["mode"] == "masked" and args["batch_size"] == 4
    assert args["protocol"] == "lavit" and args["max_new_tokens"] is None  # the task's, else the protocol's default
    assert parse_model_args("dir", protocol="lmms-eval", processor="base")["protocol"] == "lmms-eval"
    with pytest.raises(ValueError, match="unknown lavit model_args"):
        parse_model_args("dir", temperature=0.5)
    assert cut_at_stop("red. blue", ["."]) == "red" and cut_at_stop("red\n\nmore", "\n\n") == "red"
    assert cut_at_stop("red", None) == "red"


def test_generator_answers_in_order_and_matches_direct_generation(student):
    model = GenerativeModel(str(student), max_new_tokens=3)
    reqs = requests()
    got = LmmsGenerator(model, batch_size=2).generate(reqs)
    direct = [cut_at_stop(model.generate([r.images], [r.context], r.gen_kwargs["max_new_tokens"])[0],
                          r.gen_kwargs.get("until")) for r in reqs]
    assert got == direct and len(got) == 3
    with pytest.raises(ValueError, match="greedily"):
        LmmsGenerator(model).generate([Request("q", [], {"temperature": 0.7})])


def test_plugin_against_the_real_lmms_eval_interface(student):
    pytest.importorskip("lmms_eval", reason="lmms-eval is an optional extra")
    import lmms_eval.models as lmms_models
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms

    from lavit.eval.lmms_plugin import LavitLmms

    cls = lmms_models.get_model("lavit")  # resolved through our `lmms_eval.models` entry point
    assert cls is LavitLmms and issubclass(cls, lmms)
    # lmms-eval always adds its own --batch_size/--max_batch_size/--device; --model_args must win on a clash
    model = cls.create_from_arg_string(f"pretrained={student},latent_mode=masked,batch_size=2,max_new_tokens=3",
                                       {"batch_size": "1", "max_batch_size": None, "device": "cpu"})
    assert model.generator.batch_size == 2 and model.generator.model.model.device.type == "cpu"
    with pytest.raises(ValueError, match="auto"):
        cls.create_from_arg_string(f"pretrained={student}", {"batch_size": "auto", "device": None})
    reqs = requests()
    docs = {i: {"image": r.images} for i, r in enumerate(reqs)}
    model.task_dict = {"toy": {"test": docs}}
    instances = [Instance("generate_until", (r.context, r.gen_kwargs, lambda doc: doc["image"], i, "toy", "test"), i,
                          metadata={"task": "toy", "doc_id": i, "repeats": 1}) for i, r in enumerate(reqs)]
    answers = model.generate_until(instances)
    expected = LmmsGenerator(GenerativeModel(str(student), mode="masked", max_new_tokens=3), 2).generate(reqs)
    assert answers == expected
    with pytest.raises(NotImplementedError):
        model.loglikelihood(instances)


def test_placement_follows_the_launcher(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert process_placement("cpu", "") == {"rank": 0, "world_size": 1, "device_map": "cpu"}
    assert process_placement("cuda", "auto")["device_map"] == "auto"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    # lmms-eval's CLI always passes --device (default cuda): each data-parallel process uses its own device
    assert process_placement("cuda", "") == {"rank": 1, "world_size": 2, "device_map": ""}
    with pytest.raises(ValueError, match="data-parallel"):
        process_placement(None, "auto")


@pytest.mark.slow
def test_two_ranks_answer_disjoint_shards_that_make_up_the_single_process_run(student, tmp_path):
    pytest.importorskip("lmms_eval", reason="lmms-eval is an optional extra")
    driver = Path(__file__).with_name("lmms_ddp_driver.py")
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(driver), str(student), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=driver.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["device"]) for r in ranks] == [(0, 2, "cpu"), (1, 2, "cpu")]
    assert ranks[0]["counts"] == ranks[1]["counts"] == [len(r["doc_ids"]) for r in ranks]
    ids = [i for r in ranks for i in r["doc_ids"]]
    assert sorted(ids) == list(range(5)) and len(set(ids)) == 5  # disjoint shards covering every document
    from lmms_ddp_driver import GEN_KWARGS, documents

    docs = documents()
    single = LmmsGenerator(GenerativeModel(str(student)), batch_size=2).generate(
        [Request(docs[i]["question"], docs[i]["image"], dict(GEN_KWARGS)) for i in range(5)])
    got = {i: a for r in ranks for i, a in zip(r["doc_ids"], r["answers"])}
    assert [got[i] for i in range(5)] == single

"""Run by test_lmms.py under `torchrun --standalone --nproc_per_node 2`: lmms-eval's data-parallel path.

    torchrun --standalone --nproc_per_node 2 tests/eval/lmms_ddp_driver.py STUDENT OUT

Each rank builds the `lavit` model as lmms-eval's CLI does (registry, `create_from_arg_string` with the
CLI's own --device/--batch_size), takes its documents the way lmms-eval's `Task.build_all_requests`
shards them (`utils.create_iterator` by the model's rank and world size), answers them, and joins the
evaluator's request-count gather on the model's device. It records what it saw under OUT/.
"""

import json
import sys
from pathlib import Path

import torch
from lmms_eval import utils
from lmms_eval.api.instance import Instance
from PIL import Image

GEN_KWARGS = {"max_new_tokens": 3, "until": ["."]}
COLORS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 40), (200, 200, 200)]


def documents() -> dict[int, dict]:
    """Five one-image documents (lmms-eval's doc_id → doc)."""
    return {i: {"question": f"what color is shape {i} ?", "image": [Image.new("RGB", (84 + 28 * (i % 2), 84), c)]}
            for i, c in enumerate(COLORS)}


def instances(docs: dict[int, dict], ids: list[int]) -> list[Instance]:
    return [Instance("generate_until", (docs[i]["question"], dict(GEN_KWARGS), lambda doc: doc["image"], i, "toy",
                                        "test"), i, metadata={"task": "toy", "doc_id": i, "repeats": 1}) for i in ids]


def main() -> None:
    import lmms_eval.models as lmms_models

    student, out = sys.argv[1:]
    model = lmms_models.get_model("lavit").create_from_arg_string(
        f"pretrained={student},batch_size=2", {"batch_size": "1", "max_batch_size": None, "device": "cuda"})
    docs = documents()
    model.task_dict = {"toy": {"test": docs}}
    mine = [doc_id for doc_id, _ in utils.create_iterator(enumerate(docs), rank=model.rank,
                                                           world_size=model.world_size)]
    answers = model.generate_until(instances(docs, mine))
    counts = model.accelerator.gather(torch.tensor(len(mine), device=model.device)).tolist()
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{model.rank}.json").write_text(json.dumps({
        "rank": model.rank, "world_size": model.world_size, "device": str(model.device), "doc_ids": mine,
        "answers": answers, "counts": counts}))
    # lmms-eval's evaluator ends on a barrier; tearing the group down after it keeps the rank that exits
    # first from pulling the store out from under the other (an abort at interpreter exit otherwise)
    model.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

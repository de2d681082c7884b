"""The exported student served by vLLM's OpenAI server, as a stock client reaches it: the chat template puts the
latents after the generation prompt, the answers are `lavit eval --latent-mode forced`'s, and the same server
is the filter's endpoint judge. The server is always stopped, and nothing is left listening."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image
from vllm_models import export_redrawn_student

from lavit.cli import main
from lavit.eval.judge import CachedJudge, JudgeQuery, judge_prompt, openai_judge
from lavit.eval.models import GenerativeModel
from lavit.inference.generate import build_generation_inputs
from lavit.teacher.filter_config import FilterConfig
from tests.eval.fixtures import write_mmvp

SERVED_NAME = "lavit-student"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    names = export_redrawn_student(root / "student", qwen_tokenizer=True)  # vLLM detokenises Qwen's BPE itself
    port = free_port()
    log = open(root / "server.log", "w")
    # `vllm serve` (the console script) fails in the CPU package (no `vllm` distribution metadata); the module works
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(root / "student"),
         "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--max-model-len", "1024", "--limit-mm-per-prompt", json.dumps({"image": 1, "video": 0}),
         "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM's server exited ({process.returncode}):\n"
                                   + (root / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("vLLM's server did not come up in 300 s:\n"
                                   + (root / "server.log").read_text()[-3000:])
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", root, names
    finally:
        # the whole process group: the API server and any engine process it started
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # a helper the group's leader left behind
        except ProcessLookupError:
            pass
        log.close()
        assert not listening(port)


def test_served_student_answers_as_lavit_eval_forced(server, tmp_path):
    url, root, names = server
    data = write_mmvp(tmp_path / "MMVP")
    assert main(["eval", "--model", str(root / "student"), "--benchmark", "mmvp", "--data-root", str(data),
                 "--out", str(tmp_path / "eval"), "--latent-mode", "forced", "--max-new-tokens", "6"]) == 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "mmvp" / "predictions.jsonl").read_text().splitlines()]
    assert len({r["raw_output"] for r in records}) > 2  # the answers vary, so equal answers mean something
    model = GenerativeModel(str(root / "student"), mode="forced", max_new_tokens=6)
    tokenizer = model.processor.tokenizer
    latent_ids = tokenizer.convert_tokens_to_ids(names)
    served, texts = [], []
    for n, record in enumerate(records, 1):
        image = base64.b64encode((data / "MMVP Images" / f"{n}.jpg").read_bytes()).decode()
        reply = post(f"{url}/chat/completions", {
            "model": SERVED_NAME, "temperature": 0, "max_tokens": 6, "return_token_ids": True,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
                {"type": "text", "text": record["prompt"]}]}]})
        prompt_ids, choice = reply["prompt_token_ids"], reply["choices"][0]
        # the stock template ends the prompt with the K latent tokens, once, and the prompt is lavit's forced prompt
        # (the generation prompt, then the latents) id for id, image tokens included
        assert prompt_ids[-len(names):] == latent_ids and prompt_ids.count(latent_ids[0]) == 1
        ours = build_generation_inputs(model.processor, [Image.open(data / "MMVP Images" / f"{n}.jpg")],
                                       [record["prompt"]], latent_tokens=names, mode="forced",
                                       system_prompt=model.system_prompt)["input_ids"][0].tolist()
        assert prompt_ids == ours
        served.append(tokenizer.decode(choice["token_ids"], skip_special_tokens=True).strip())
        texts.append(choice["message"]["content"].strip())
    assert served == [r["raw_output"] for r in records]
    assert texts == served  # the server's own text: latents stripped, the same words


def test_endpoint_judge_asks_the_server(server, tmp_path):
    url, root, _ = server
    queries = [JudgeQuery("what color is the circle ?", "red", "a red one"),
               JudgeQuery("which shape is blue ?", "the square", "circle"),
               JudgeQuery("how many cat ?", "two", "2")]
    judge = CachedJudge(openai_judge(url, SERVED_NAME, max_new_tokens=4), f"{url}#{SERVED_NAME}",
                        tmp_path / "cache.jsonl", batch_size=2)
    verdicts = judge(queries)
    assert judge.asked == 3 and judge.calls == 2
    # the server renders the judge prompt with the export's template (trained system prompt, then the latents):
    # lavit's forced mode on the text alone
    local = GenerativeModel(str(root / "student"), mode="forced", max_new_tokens=4).generate(
        [[] for _ in queries], [judge_prompt(q) for q in queries])
    assert [v.output.strip() for v in verdicts] == local
    assert judge(queries) and judge.asked == 3  # asked once: the rest from the cache
    # as the filter's judge setting; a server that is not there is an error, not a verdict
    FilterConfig(matcher="judge", judge=url, judge_model=SERVED_NAME)
    with pytest.raises(ValueError, match="judge_model"):
        FilterConfig(matcher="judge", judge=url)
    dead = openai_judge(f"http://127.0.0.1:{free_port()}/v1", SERVED_NAME, timeout=5)
    with pytest.raises(RuntimeError, match="unreachable"):
        dead(queries[:1])

"""A model judge for free-text answers the rules cannot decide (the teacher filter's `matcher=judge`).

A judge is a function from a batch of `JudgeQuery` (question, reference answer, candidate answer) to the raw
texts it wrote: `engine_judge` asks a local checkpoint of any supported family on a generation engine
(`lavit.inference.engines`: transformers or vLLM; `transformers_judge` for a loaded model), `openai_judge` any
OpenAI-compatible chat endpoint (a `vllm serve`, a hosted model), one user message per query, greedy.
The prompt is fixed and versioned (`JUDGE_PROMPT_VERSION`); `parse_judge_output` reads a strict yes/no.
`CachedJudge` asks each distinct query once per prompt version and judge, in batches, and keeps every raw
output in a JSONL cache so a rerun asks nothing again. `decide` lets the rules decide first and sends only
the pairs they defer to the judge.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lavit.console import EndpointError
from lavit.eval.matching import Verdict
from lavit.inference.engines import TransformersEngine

JUDGE_PROMPT_VERSION = "judge-v1"
JUDGE_PROMPT = (
    "You are grading an answer to a question about an image. You cannot see the image: decide only whether the "
    "candidate answer says the same as the reference answer (a paraphrase, a different number format or extra "
    "detail that does not contradict it counts as the same; a hedge between several answers does not).\n"
    "Question: {question}\n"
    "Reference answer: {truth}\n"
    "Candidate answer: {prediction}\n"
    "Is the candidate answer correct? Reply with a single word: yes or no."
)
# 'yes' / 'no' first, then only punctuation, the end, or more words that do not name the other verdict.
_VERDICT = re.compile(r"^[\s*\"'`(\[]*(yes|no)\b(?P<rest>.*)$", re.I | re.S)


@dataclass(frozen=True)
class JudgeQuery:
    question: str
    truth: str
    prediction: str


@dataclass(frozen=True)
class JudgeVerdict:
    """`verdict` True (yes) / False (no) / None (unparsable), the judge's raw `output`, and whether it came
    from the cache."""

    verdict: bool | None
    output: str
    cached: bool


RawJudge = Callable[[list[JudgeQuery]], list[str]]


def judge_prompt(query: JudgeQuery) -> str:
    return JUDGE_PROMPT.format(question=query.question, truth=query.truth, prediction=query.prediction)


def parse_judge_output(raw: str) -> bool | None:
    """'yes' → True, 'no' → False (any case, punctuation or whitespace around; 'Yes, it is correct.' is yes);
    anything else — 'maybe', 'Yes and no', an empty output — is None (unparsable)."""
    m = _VERDICT.match(raw)
    if not m:
        return None
    word = m.group(1).lower()
    other = "no" if word == "yes" else "yes"
    if re.search(rf"\b{other}\b", m.group("rest"), re.I):
        return None  # 'Yes and no', 'No, yes': no single verdict
    return word == "yes"


def engine_judge(engine, *, max_new_tokens: int = 8, system_prompt: str | None = None) -> RawJudge:
    """A judge asking a model on a generation engine (text only, greedy) one batch per call."""

    def judge(queries: list[JudgeQuery]) -> list[str]:
        return engine.generate(None, [judge_prompt(q) for q in queries], latent_tokens=[], mode="none",
                               system_prompt=system_prompt, max_new_tokens=max_new_tokens)

    return judge


def transformers_judge(model, processor, *, max_new_tokens: int = 8, system_prompt: str | None = None) -> RawJudge:
    """A judge asking a loaded model (text only, greedy) one batch per call."""
    return engine_judge(TransformersEngine(model, processor), max_new_tokens=max_new_tokens,
                        system_prompt=system_prompt)


def is_endpoint(judge: str) -> bool:
    """Whether a judge setting names an OpenAI-compatible endpoint (http(s)://HOST:PORT/v1) rather than a model."""
    return judge.startswith(("http://", "https://"))


def openai_judge(base_url: str, model: str, *, max_new_tokens: int = 8, timeout: float = 120.0,
                 concurrency: int = 8) -> RawJudge:
    """A judge asking an OpenAI-compatible endpoint: one chat request per query (the prompt as the user's message,
    temperature 0), `concurrency` at a time. A failed request is an error naming the endpoint, never a verdict."""
    url = base_url.rstrip("/") + "/chat/completions"

    def ask(query: JudgeQuery) -> str:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": judge_prompt(query)}],
                           "temperature": 0, "max_tokens": max_new_tokens}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise EndpointError(f"judge endpoint {url} answered HTTP {err.code}: {err.read()[:300]!r}") from None
        except (urllib.error.URLError, TimeoutError) as err:
            raise EndpointError(f"judge endpoint {url} unreachable ({err}); is the server up?") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"judge endpoint {url} sent no chat completion: {str(reply)[:300]}") from None

    def judge(queries: list[JudgeQuery]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(queries)))) as pool:
            return list(pool.map(ask, queries))

    return judge


def _cache_key(judge_name: str, question: str, truth: str, prediction: str) -> tuple[str, ...]:
    return (JUDGE_PROMPT_VERSION, judge_name, question, truth, prediction)


def read_judge_cache(path: Path) -> dict[tuple[str, ...], str]:
    """Raw outputs by (prompt version, judge, question, truth, prediction); other versions' lines stay unused."""
    if not path.exists():
        return {}
    cache = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            key = (entry["prompt_version"], entry["judge"], entry["question"], entry["truth"], entry["prediction"])
            cache[key] = entry["output"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: malformed judge-cache line ({err}); delete the line or the file") from None
    return cache


class CachedJudge:
    """Asks `raw` only what `cache_path` does not hold, `batch_size` queries per call, appending each batch.

    `asked` counts the queries sent to the judge in this process, `calls` its batch calls, `cached` the
    queries answered from the cache.
    """

    def __init__(self, raw: RawJudge, judge_name: str, cache_path: str | Path, batch_size: int):
        if batch_size < 1:
            raise ValueError("judge batch_size must be positive")
        self.raw, self.name, self.path, self.batch_size = raw, judge_name, Path(cache_path), batch_size
        self.cache = read_judge_cache(self.path)
        self.asked = self.calls = self.cached = 0

    def __call__(self, queries: list[JudgeQuery]) -> list[JudgeVerdict]:
        keys = [_cache_key(self.name, q.question, q.truth, q.prediction) for q in queries]
        todo = list({k: q for k, q in zip(keys, queries) if k not in self.cache}.items())  # distinct, in order
        self.cached += sum(k in self.cache for k in keys)
        for i in tqdm(range(0, len(todo), self.batch_size), desc="judge", unit="batch", disable=not todo):
            chunk = todo[i:i + self.batch_size]
            outputs = self.raw([q for _, q in chunk])
            if len(outputs) != len(chunk) or not all(isinstance(o, str) for o in outputs):
                raise ValueError(f"judge {self.name!r} returned {len(outputs)} outputs for {len(chunk)} queries")
            self.calls += 1
            self.asked += len(chunk)
            self._append([(k, q, o) for (k, q), o in zip(chunk, outputs)])
        asked_now = {k for k, _ in todo}
        return [JudgeVerdict(parse_judge_output(self.cache[k]), self.cache[k], cached=k not in asked_now)
                for k in keys]

    def _append(self, entries: list[tuple[tuple[str, ...], JudgeQuery, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for key, query, output in entries:
            verdict = parse_judge_output(output)
            lines.append(json.dumps({"prompt_version": JUDGE_PROMPT_VERSION, "judge": self.name,
                                     "question": query.question, "truth": query.truth,
                                     "prediction": query.prediction, "output": output,
                                     "verdict": {True: "yes", False: "no", None: "unparsable"}[verdict]}) + "\n")
            self.cache[key] = output
        with open(self.path, "a", encoding="utf-8") as f:  # one write per batch: a killed run keeps whole batches
            f.write("".join(lines))


@dataclass(frozen=True)
class Decision:
    """How one (prediction, truth) pair was decided: `match` True/False/None (undecided), `by` 'rules' or
    'judge', the rule's name, and the judge's raw output where it was asked."""

    match: bool | None
    by: str
    rule: str
    judge_output: str | None = None
    cached: bool = False


def decide(queries: list[JudgeQuery], rules: Callable[[str, str], Verdict],
           judge: Callable[[list[JudgeQuery]], list[JudgeVerdict]] | None) -> list[Decision]:
    """Rules first; the pairs they defer go to `judge` in one batch (or stay undecided without a judge)."""
    verdicts = [rules(q.prediction, q.truth) for q in queries]
    deferred = [i for i, v in enumerate(verdicts) if v.match is None]
    judged = dict(zip(deferred, judge([queries[i] for i in deferred]))) if judge and deferred else {}
    decisions = []
    for i, verdict in enumerate(verdicts):
        if i in judged:
            j = judged[i]
            decisions.append(Decision(j.verdict, "judge", verdict.rule, j.output, j.cached))
        else:
            decisions.append(Decision(verdict.match, "rules", verdict.rule))
    return decisions

"""The model judge: a fixed, versioned prompt, a strict yes/no parse, tiny transformers judges whose output
is set by their weights, a cache that makes a rerun ask nothing, and rules that decide before the judge."""

from __future__ import annotations

import hashlib
import json

import pytest
from judges import fixed_output_judge, marker_judge

from lavit.eval import judge as judge_module
from lavit.eval.judge import (
    JUDGE_PROMPT,
    JUDGE_PROMPT_VERSION,
    CachedJudge,
    JudgeQuery,
    decide,
    judge_prompt,
    parse_judge_output,
    read_judge_cache,
    transformers_judge,
)
from lavit.eval.matching import rule_verdict

# A prompt edited without a new version would silently reuse cached verdicts given to the old prompt.
PROMPT_SHA256 = {"judge-v1": "06386605050e5730c69149b9ecfe939228f23bcf84a0448a67fcaae5469ea60f"}


def test_prompt_is_fixed_and_versioned():
    assert hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest() == PROMPT_SHA256[JUDGE_PROMPT_VERSION]
    prompt = judge_prompt(JudgeQuery("What is the man wearing?", "a red shirt", "a red T-shirt"))
    assert "Question: What is the man wearing?\nReference answer: a red shirt\nCandidate answer: a red T-shirt\n" \
        in prompt
    assert prompt.endswith("Reply with a single word: yes or no.")


@pytest.mark.parametrize(("raw", "expected"), [
    ("yes", True), ("Yes.", True), ("  YES  ", True), ("Yes, it is correct.", True), ("yes , it is correct .", True),
    ("**Yes**", True), ('"yes"', True), ("Yes it is", True),
    ("no", False), ("No.", False), ("NO!", False), ("No, the candidate is wrong.", False), ("(no)", False),
    ("maybe", None), ("", None), ("Yes and no.", None), ("No, yes.", None), ("The answer is yes.", None),
    ("yesno", None), ("nope", None), ("Yeah", None), ("I think so", None),
])
def test_parse_judge_output_is_strict(raw, expected):
    assert parse_judge_output(raw) is expected


QUERIES = [JudgeQuery("What is the man wearing?", "The man wears a red shirt.", "The man is wearing a red shirt."),
           JudgeQuery("What is the woman doing?", "She rides a bicycle.", "A woman is cycling.")]


@pytest.mark.parametrize(("words", "family", "verdict"), [
    (["yes"], "qwen2_5_vl", True),
    (["no"], "qwen2_5_vl", False),
    (["maybe"], "qwen2_5_vl", None),
    (["yes", ",", "it", "is", "correct", "."], "qwen2_5_vl", True),
    (["no"], "qwen3_vl", False),
])
def test_tiny_transformers_judges_say_what_their_weights_say(words, family, verdict):
    model, processor = fixed_output_judge(words, family=family)
    raw = transformers_judge(model, processor, max_new_tokens=8)
    outputs = raw(QUERIES)
    assert outputs == [" ".join(words)] * len(QUERIES)
    assert [parse_judge_output(o) for o in outputs] == [verdict] * len(QUERIES)


class Counting:
    """A raw judge wrapped to record the batches it is asked."""

    def __init__(self, raw):
        self.raw, self.batches = raw, []

    def __call__(self, queries):
        self.batches.append(list(queries))
        return self.raw(queries)


def test_cache_asks_each_distinct_query_once_and_a_rerun_asks_nothing(tmp_path, monkeypatch):
    model, processor = fixed_output_judge(["yes"])
    queries = [JudgeQuery("q ?", "t", f"p{i}") for i in range(4)] + [JudgeQuery("q ?", "t", "p1")]  # a duplicate
    path = tmp_path / "cache.jsonl"
    raw = Counting(transformers_judge(model, processor))
    judge = CachedJudge(raw, "judge-A", path, batch_size=3)
    first = judge(queries)
    assert [len(b) for b in raw.batches] == [3, 1]  # batches of batch_size, each distinct query once
    assert (judge.asked, judge.calls, judge.cached) == (4, 2, 0)
    assert [v.verdict for v in first] == [True] * 5 and [v.output for v in first] == ["yes"] * 5
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 4 and lines[0] == {"prompt_version": JUDGE_PROMPT_VERSION, "judge": "judge-A",
                                            "question": "q ?", "truth": "t", "prediction": "p0", "output": "yes",
                                            "verdict": "yes"}

    rerun_raw = Counting(transformers_judge(model, processor))
    rerun = CachedJudge(rerun_raw, "judge-A", path, batch_size=3)
    again = rerun(queries)
    assert rerun_raw.batches == [] and (rerun.asked, rerun.cached) == (0, 5)
    assert [(v.verdict, v.output, v.cached) for v in again] == [(True, "yes", True)] * 5

    # the key holds the judge and the prompt version: another judge, or a new prompt, is asked again
    other = Counting(transformers_judge(model, processor))
    CachedJudge(other, "judge-B", path, batch_size=8)(queries[:2])
    assert [len(b) for b in other.batches] == [2]
    monkeypatch.setattr(judge_module, "JUDGE_PROMPT_VERSION", "judge-v2")
    newer = Counting(transformers_judge(model, processor))
    CachedJudge(newer, "judge-A", path, batch_size=8)(queries[:2])
    assert [len(b) for b in newer.batches] == [2]
    assert len(read_judge_cache(path)) == 8


def test_a_judge_reading_its_input_keeps_each_verdict_with_its_query(tmp_path):
    """A tiny judge that says yes iff 'good' is in its prompt: batched (left-padded prompts of different
    lengths), deduplicated and cached, every output still belongs to its own query."""
    model, processor = marker_judge("good")
    raw = Counting(transformers_judge(model, processor, max_new_tokens=1))
    queries = [JudgeQuery("what color is the circle ?", "red", "good"),
               JudgeQuery("which shape is yellow ?", "triangle", "a square"),
               JudgeQuery("a much longer question about which shape is yellow and where it is ?", "red", "a good red"),
               JudgeQuery("what ?", "blue", "blue"),
               JudgeQuery("what color is the circle ?", "red", "good")]
    expected = [True, False, True, False, True]
    judge = CachedJudge(raw, "marker", tmp_path / "cache.jsonl", batch_size=3)
    assert [v.verdict for v in judge(queries)] == expected
    assert [len(b) for b in raw.batches] == [3, 1]
    rerun = CachedJudge(raw, "marker", tmp_path / "cache.jsonl", batch_size=3)
    assert [(v.verdict, v.cached) for v in rerun(queries[::-1])] == [(e, True) for e in expected[::-1]]
    assert [len(b) for b in raw.batches] == [3, 1]


def test_bad_cache_lines_and_bad_judges_are_errors(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps({"prompt_version": "judge-v1", "judge": "j", "question": "q", "truth": "t",
                                "prediction": "p", "output": "yes"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"cache.jsonl:2: malformed"):
        CachedJudge(lambda qs: ["yes"] * len(qs), "j", path, batch_size=2)
    with pytest.raises(ValueError, match="returned 1 outputs for 2 queries"):
        CachedJudge(lambda qs: ["yes"], "j", tmp_path / "other.jsonl", batch_size=2)(QUERIES)
    with pytest.raises(ValueError, match="batch_size"):
        CachedJudge(lambda qs: [], "j", tmp_path / "x.jsonl", batch_size=0)


def test_rules_decide_first_and_the_judge_only_the_rest(tmp_path):
    model, processor = fixed_output_judge(["no"])
    raw = Counting(transformers_judge(model, processor))
    judge = CachedJudge(raw, "no-judge", tmp_path / "cache.jsonl", batch_size=8)
    queries = [
        JudgeQuery("Which? (A) red (B) blue", "B", "The answer is (B)."),  # letter: rules, True
        JudgeQuery("How many?", "1000", "1,000"),  # number: rules, True
        JudgeQuery("Is it open?", "yes", "yes and no"),  # hedge: rules, False
        *QUERIES,  # paraphrases: the judge
    ]
    decisions = decide(queries, rule_verdict, judge)
    assert [d.by for d in decisions] == ["rules", "rules", "rules", "judge", "judge"]
    assert [d.match for d in decisions] == [True, True, False, False, False]
    assert [d.rule for d in decisions[:3]] == ["letter", "number", "hedge"]
    assert [d.judge_output for d in decisions] == [None, None, None, "no", "no"]
    assert raw.batches == [QUERIES]
    # without a judge a deferred pair stays undecided
    assert [d.match for d in decide(queries, rule_verdict, None)] == [True, True, False, None, None]


class _Endpoint:
    """A stand-in OpenAI-compatible chat endpoint on 127.0.0.1: answers 'yes' when the candidate says 'red',
    records every request body, and fails with HTTP 500 for the model 'broken'."""

    def __init__(self):
        import http.server
        import threading

        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the handler's API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                bodies.append((self.path, body))
                if body["model"] == "broken":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"engine died")
                    return
                text = body["messages"][0]["content"]
                reply = {"choices": [{"message": {"role": "assistant",
                                                  "content": "Yes." if "Candidate answer: red" in text else "no"}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_openai_judge_asks_one_chat_message_per_query_and_fails_loudly(tmp_path):
    from lavit.eval.judge import openai_judge

    endpoint = _Endpoint()
    try:
        queries = [JudgeQuery("what color ?", "red", "red"), JudgeQuery("what color ?", "red", "blue"),
                   JudgeQuery("which shape ?", "circle", "red")]
        judge = CachedJudge(openai_judge(endpoint.url + "/", "m", max_new_tokens=5, concurrency=2), "e#m",
                            tmp_path / "cache.jsonl", batch_size=2)
        assert [v.verdict for v in judge(queries)] == [True, False, True]
        assert judge.asked == 3 and judge.calls == 2 and len(endpoint.bodies) == 3
        path, body = endpoint.bodies[0]
        assert path == "/v1/chat/completions"
        assert body["model"] == "m" and body["temperature"] == 0 and body["max_tokens"] == 5
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert {b["messages"][0]["content"] for _, b in endpoint.bodies} == {judge_prompt(q) for q in queries}
        with pytest.raises(RuntimeError, match="HTTP 500"):
            openai_judge(endpoint.url, "broken")(queries[:1])
    finally:
        endpoint.close()
    with pytest.raises(RuntimeError, match="unreachable"):
        openai_judge(endpoint.url, "m", timeout=5)(queries[:1])


def test_filter_takes_an_endpoint_judge_with_its_model_name(tmp_path):
    from lavit.teacher.filter import build_judge, judge_identity
    from lavit.teacher.filter_config import FilterConfig

    cfg = FilterConfig(matcher="judge", judge="http://127.0.0.1:8000/v1", judge_model="qwen")
    assert judge_identity(cfg.judge, cfg.seed, cfg.judge_model) == "http://127.0.0.1:8000/v1#qwen"
    endpoint = _Endpoint()
    try:
        cfg = FilterConfig(matcher="judge", judge=endpoint.url, judge_model="qwen", out=str(tmp_path / "sft"))
        judge = build_judge(cfg, cfg.judge, {})
        assert judge.name == f"{endpoint.url}#qwen" and judge.path == tmp_path / "sft.judge_cache.jsonl"
        assert [v.verdict for v in judge([JudgeQuery("q ?", "red", "red")])] == [True]
        assert endpoint.bodies[0][1]["model"] == "qwen"
    finally:
        endpoint.close()
    with pytest.raises(ValueError, match="needs judge_model"):
        FilterConfig(matcher="judge", judge="http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="judge_model"):
        FilterConfig(matcher="judge", judge="tiny", judge_model="qwen")

"""Tests for Chapter 13's server: a real uvicorn on 127.0.0.1 (a free port, in a thread), spoken to
with httpx — results equal to the model's own, streaming, bad requests, limits, disconnects, errors
without internals, a bounded load test, loading only safetensors, and the command line."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from scratchlm.decoding import generate
from scratchlm.errors import CheckpointError
from scratchlm.heads import SequenceClassifier
from scratchlm.models import GPT, BertConfig, BertModel, GPTConfig
from scratchlm.serve.app import ServeLimits, create_app
from scratchlm.serve.bundle import load_bundle, save_classifier, save_generator
from scratchlm.serve.client import LoadResult, parse_sse, run_load_test, stream_text
from scratchlm.serve.runner import ServerThread, is_loopback
from scratchlm.tokenizers import CharTokenizer, WordPieceTokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?\n"
PROMPTS = ["to be", "or not", "the king said, ", "a", "what light through yonder window"]
LIMITS = dict(max_new_tokens=24, max_in_flight=16, max_batch_size=4, max_wait_ms=10.0, max_body_bytes=4096,
              max_prompt_chars=200, max_classify_texts=4)


def _bundle_dir(root: Path) -> Path:
    torch.manual_seed(0)
    tok = CharTokenizer(ALPHABET)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layers=2, n_heads=2, d_model=32))
    with torch.no_grad():
        gpt.transformer.wte.weight.mul_(20)  # varied greedy continuations
    save_generator(root, gpt, tok)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"free win call now hi how are you ok".split()]
    wp = WordPieceTokenizer(vocab)
    bert = BertModel(BertConfig(vocab_size=len(vocab), d_model=16, n_layers=1, n_heads=2, d_ff=32, max_positions=32))
    clf = SequenceClassifier(bert, 16, 2, pooling="mean")
    save_classifier(root, clf.eval(), wp, ["ham", "spam"], max_length=16)
    return root


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return _bundle_dir(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def server(bundle):
    with ServerThread(create_app(bundle, ServeLimits(**LIMITS))) as srv:
        yield srv
    assert not srv.thread.is_alive()  # shut down cleanly


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def expected(bundle, prompt: str, n: int) -> str:
    tok, model = bundle.generator_tokenizer, bundle.generator
    out = generate(model, torch.tensor([tok.encode(prompt)]), n, greedy=True)
    return tok.decode(out[0, -n:].tolist())


def sse_events(text: str) -> list[tuple[str, dict]]:
    import json

    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def assert_no_internals(body: str) -> None:
    for leak in ("Traceback", 'File "', "scratchlm/", "site-packages", os.sep + "tmp"):
        assert leak not in body, body


# ---- results ------------------------------------------------------------------------------------
def test_health_and_the_server_binds_to_loopback(client, server):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["generator"] and body["classifier"]
    assert server.url.startswith("http://127.0.0.1:")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_generate_returns_the_models_greedy_continuation(client, bundle):
    for prompt in PROMPTS[:3]:
        r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 12, "stream": False})
        assert r.status_code == 200, r.text
        assert r.json() == {"completion": expected(bundle, prompt, 12), "new_tokens": 12, "finish_reason": "length"}


def test_generate_streams_server_sent_events_token_by_token(client, bundle):
    with client.stream("POST", "/generate", json={"prompt": "to be", "max_new_tokens": 10}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = [c for c in r.iter_text()]
    events = sse_events("".join(chunks))
    assert [e for e, _ in events] == ["token"] * 10 + ["done"]
    text = "".join(d["text"] for e, d in events if e == "token")
    assert text == expected(bundle, "to be", 10) == events[-1][1]["completion"]
    assert [d["index"] for e, d in events if e == "token"] == list(range(10))


def test_classify_returns_the_classifiers_probabilities(client, bundle):
    texts = ["free call now", "hi how are you"]
    r = client.post("/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    tok = bundle.classifier_tokenizer
    from scratchlm.data.collate import pad_sequences

    ids, mask = pad_sequences([tok.encode(t) for t in texts], 0)
    with torch.no_grad():
        probs = torch.softmax(bundle.classifier(ids, attention_mask=mask).logits, -1)
    got = torch.tensor(r.json()["probabilities"])
    torch.testing.assert_close(got, probs, atol=1e-5, rtol=0)
    assert r.json()["labels"] == [["ham", "spam"][i] for i in probs.argmax(-1).tolist()]


# ---- bad requests -------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, code", [
    ({"prompt": "x" * 201}, 413, "prompt_too_long"),
    ({"prompt": "a" * 60, "max_new_tokens": 10}, 413, "prompt_too_long"),  # 60 + 10 > the 64-token context
    ({"prompt": "hi", "max_new_tokens": 25}, 422, "invalid_request"),
    ({"prompt": "hi", "max_new_tokens": 0}, 422, "invalid_request"),
    ({"prompt": "hi", "temperature": 2.5}, 422, "invalid_request"),
    ({"prompt": "hi", "temperature": -1}, 422, "invalid_request"),
    ({"prompt": "hi", "max_new_tokens": "5"}, 422, "invalid_request"),
    ({"prompt": "hi", "top_p": 0.9}, 422, "invalid_request"),  # an unknown field
    ({"prompt": ""}, 422, "invalid_request"),
    ({"prompt": "HELLO"}, 422, "invalid_request"),  # characters the tokenizer does not know
    ({}, 422, "invalid_request"),
])
def test_bad_generate_requests_get_a_clear_json_error(client, body, status, code):
    r = client.post("/generate", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert_no_internals(r.text)


def test_malformed_json_unknown_paths_methods_and_oversized_bodies(client):
    r = client.post("/generate", content=b'{"prompt": "hi",', headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_json")
    assert (client.get("/nope").status_code, client.get("/nope").json()["error"]["code"]) == (404, "not_found")
    assert client.get("/generate").status_code == 405
    big = b'{"prompt": "' + b"a" * 5000 + b'"}'
    r = client.post("/generate", content=big, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
    for body in ({"texts": ["a"] * 5}, {"texts": []}, {"texts": ["  "]}, {"text": "hi"}):
        r = client.post("/classify", json=body)
        assert 400 <= r.status_code < 500 and "error" in r.json(), (body, r.text)


def test_an_unexpected_error_is_a_500_without_a_traceback_or_a_path(server, client):
    app_server = server.app.state.server
    original = app_server.classify_batch

    def broken(texts):
        raise RuntimeError(f"secret failure in {Path(__file__).resolve()}")

    app_server.classify_batch = broken
    try:
        r = client.post("/classify", json={"texts": ["hi"]})
    finally:
        app_server.classify_batch = original
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "secret" not in r.text
    assert_no_internals(r.text)


# ---- limits on concurrent work ------------------------------------------------------------------
class _Gate:
    """Holds the generation worker until released, so requests stay in flight."""

    def __init__(self, queue) -> None:
        self.queue, self.event, self.original = queue, threading.Event(), queue._run

    def __enter__(self):
        def held(batch):
            self.event.wait(20)
            return self.original(batch)
        self.queue._run = held
        return self

    def __exit__(self, *exc) -> None:
        self.event.set()
        self.queue._run = self.original


def _wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_requests_beyond_the_in_flight_limit_get_503_and_disconnects_free_their_slot(bundle):
    app = create_app(bundle, ServeLimits(**(LIMITS | dict(max_in_flight=2))))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        state = app.state.server
        with _Gate(state.queue):
            results: list[int] = []
            threads = [threading.Thread(target=lambda: results.append(
                c.post("/generate", json={"prompt": "to be", "max_new_tokens": 5, "stream": False}).status_code))
                for _ in range(2)]
            for t in threads:
                t.start()
            assert _wait_until(lambda: state.in_flight == 2)
            r = c.post("/generate", json={"prompt": "hi", "stream": False})
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"]
            assert c.get("/health").json()["in_flight"] == 2  # health is never refused
        for t in threads:
            t.join(20)
        assert results == [200, 200] and state.in_flight == 0

        # a client that disconnects while queued, and one that disconnects mid-stream, free their slots
        with _Gate(state.queue):
            with httpx.Client(base_url=srv.url, timeout=30) as gone:
                with gone.stream("POST", "/generate", json={"prompt": "to be", "max_new_tokens": 5}):
                    assert _wait_until(lambda: state.in_flight == 1)
            assert _wait_until(lambda: state.in_flight == 0)
        slow_original = state.generator.stream

        def slow_stream(*args, **kwargs):
            for tokens in slow_original(*args, **kwargs):
                time.sleep(0.05)
                yield tokens
        state.generator.stream = slow_stream
        try:
            before = state.queue.stats.tokens
            with httpx.Client(base_url=srv.url, timeout=30) as gone:
                with gone.stream("POST", "/generate", json={"prompt": "to be", "max_new_tokens": 24}) as r:
                    lines = r.iter_lines()
                    assert next(lines).startswith("event: token")
            assert _wait_until(lambda: state.in_flight == 0)
            time.sleep(0.3)
            assert state.queue.stats.tokens - before < 24  # the batch stopped early: no work for nobody
        finally:
            state.generator.stream = slow_original


# ---- load test ----------------------------------------------------------------------------------
def test_bounded_load_test_every_response_complete_and_correct(server, bundle, client):
    """N concurrent streaming clients for a few seconds: throughput, p50/p95 latency, all correct."""
    n_new = 16
    want = {p: expected(bundle, p, n_new) for p in PROMPTS}
    before = client.get("/health").json()["batching"]
    result = run_load_test(server.url, PROMPTS, n_clients=8, duration_s=3.0, max_new_tokens=n_new, expected=want)
    after = client.get("/health").json()["batching"]
    assert not result.failures, result.failures[:3]
    s = result.summary()
    print(f"\nload test: {s['clients']} clients, {s['requests']} requests in {result.wall_s:.1f} s = "
          f"{s['requests_per_s']:.1f} req/s, {s['tokens_per_s']:.0f} tokens/s; latency p50 {s['p50_ms']:.0f} ms, "
          f"p95 {s['p95_ms']:.0f} ms; largest batch {after['largest_batch']}, mean batch "
          f"{(after['requests'] - before['requests']) / max(1, after['batches'] - before['batches']):.2f}")
    assert result.requests >= 8 and result.tokens == result.requests * n_new
    assert after["largest_batch"] > 1  # concurrent requests were batched
    assert client.get("/health").json()["in_flight"] == 0


def test_a_dry_run_load_test_expects_the_capped_number_of_tokens(server, bundle, monkeypatch):
    """Under SCRATCHLM_MAX_STEPS the server streams that many tokens, and the load test counts them complete."""
    want = {p: expected(bundle, p, 2) for p in PROMPTS}  # the first 2 greedy tokens, computed without a cap
    monkeypatch.setenv("SCRATCHLM_MAX_STEPS", "2")
    result = run_load_test(server.url, PROMPTS, n_clients=2, duration_s=1.0, max_new_tokens=16, expected=want)
    assert not result.failures, result.failures[:3]
    assert result.requests >= 2 and result.tokens == 2 * result.requests


def test_sse_parsing_and_load_result_statistics():
    lines = ["event: token", 'data: {"text": "a"}', "", "event: done", 'data: {"finish_reason": "length"}', ""]
    events = list(parse_sse(lines))
    assert events == [("token", {"text": "a"}), ("done", {"finish_reason": "length"})]
    assert stream_text(events) == ("a", "length")
    r = LoadResult(n_clients=1, wall_s=2.0, latencies_s=[0.1 * i for i in range(1, 21)], tokens=40)
    assert r.percentile(0.95) == pytest.approx(1.9) and r.summary()["p50_ms"] == pytest.approx(1050)
    with pytest.raises(ValueError):
        run_load_test("http://127.0.0.1:1", [], n_clients=1)


# ---- loading and the command line ---------------------------------------------------------------
class _Booby:
    """Unpickling this would create a marker file: proof that nothing was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weights_are_read_from_safetensors_only(tmp_path):
    gen = tmp_path / "generator"
    gen.mkdir()
    marker = tmp_path / "unpickled"
    (gen / "pytorch_model.bin").write_bytes(pickle.dumps(_Booby(str(marker))))
    with pytest.raises(CheckpointError, match="pickle"):
        load_bundle(tmp_path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="neither"):
        load_bundle(tmp_path / "generator")
    with pytest.raises(CheckpointError, match="no such"):
        load_bundle(tmp_path / "missing")


def test_the_command_line_serves_on_loopback_and_stops(bundle_dir):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "scratchlm.serve", "--model", str(bundle_dir), "--port", "0",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # "listening on http://127.0.0.1:PORT"
        assert line.startswith("listening on http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[-1]
        assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"
        r = httpx.post(url + "/generate", json={"prompt": "to be", "max_new_tokens": 4, "stream": False}, timeout=30)
        assert r.status_code == 200 and r.json()["new_tokens"] == 4
    finally:
        proc.terminate()
        code = proc.wait(timeout=20)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: exit status -15 (or 0)
    assert code in (0, -15) and "Traceback" not in err, (code, err)
    bad = subprocess.run([sys.executable, "-m", "scratchlm.serve", "--model", str(bundle_dir / "nope")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "no such serving directory" in bad.stderr and "Traceback" not in bad.stderr

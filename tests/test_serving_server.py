"""`jaxlm serve` driven by the official `openai` client: completions and chat, streaming and not, usage
counts, the faults (400 naming the field, 401, 429 with the server still answering, a disconnect
mid-stream freeing its pages, a drain), /metrics; and `jaxlm generate --input/--output` resuming with
no partial line. One tiny saved model (bundled tokenizer, a chat template beside it) and one in-process
server on a free port for the module; the SIGTERM test runs the real command in a subprocess (slow).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from inference_util import random_model  # noqa: E402

import jaxlm  # noqa: E402
from jaxlm.assets import resolve_path  # noqa: E402
from jaxlm.checkpoint import save_model  # noqa: E402
from jaxlm.cli.main import main  # noqa: E402
from jaxlm.config import RunConfig  # noqa: E402
from jaxlm.model import ModelConfig  # noqa: E402

from cli_helpers import REPO, cli_env  # noqa: E402

CFG = ModelConfig(name="tiny_serve", vocab_size=2048, model_dim=64, num_layers=2, head_dim=16,
                  num_query_heads=(2, 4), num_kv_heads=(1, 2), ffn_dim=(64, 128), max_context=128)
KEY = "sk-test"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who goes there?"}]
ENGINE = dict(max_slots=2, max_queue=2, page_size=16, prefill_chunk=32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    template = root / "chat_template.jinja"  # read by the tokenizer as tokenizer_config.json's chat_template
    template.write_text(resolve_path("bundled:chat/turns.jinja").read_text())
    save_model(root / "model", RunConfig(model=CFG), random_model(CFG, seed=2),
               extra_files=[resolve_path("bundled:tokenizer/tokenizer.model"), template])
    return root / "model"


@pytest.fixture(scope="module")
def lm(model_dir):
    return jaxlm.load(model_dir)


@pytest.fixture(scope="module")
def server(lm):
    from jaxlm.serving.engine import ServingEngine
    from jaxlm.serving.server import Server

    srv = Server(ServingEngine(lm, **ENGINE), lm, model_name="tiny", port=0, api_key=KEY, drain_s=5).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def idle(engine, timeout_s: float = 5.0) -> bool:
    """Wait until the engine holds no request and no page; True if it got there."""
    end = time.time() + timeout_s
    while time.time() < end:
        s = engine.stats()
        if s.running == 0 and s.waiting == 0 and s.pages_in_use == 0:
            return True
        time.sleep(0.02)
    return False


def test_completions_whole_and_streamed_agree(client, server, lm):
    ids = lm.tokenizer.encode_input("ROMEO:")
    whole = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=12, temperature=0, logprobs=1)
    choice = whole.choices[0]
    assert whole.usage.prompt_tokens == len(ids) and whole.usage.completion_tokens == 12
    assert whole.usage.total_tokens == len(ids) + 12 and choice.finish_reason == "length"
    assert len(choice.logprobs.token_logprobs) == 12 and all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    direct = lm.generate_ids([ids], 12).tokens[0]  # the static engine, greedy: the same text
    assert choice.text == lm.continuation_text(ids, direct)
    chunks = list(client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices
    two = client.completions.create(model="tiny", prompt=["ROMEO:", "JULIET:"], max_tokens=4, temperature=0)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == lm.continuation_text(ids, direct[:4])
    assert idle(server.engine)


def test_chat_whole_and_streamed(client, server, lm):
    prompt = lm.chat_prompt(MESSAGES)
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0,
                                           logprobs=True)
    assert whole.usage.prompt_tokens == len(prompt) and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == len(whole.choices[0].logprobs.content) <= 10
    assert whole.choices[0].message.content == lm.chat(MESSAGES, 10)  # lm.chat: same template, same stop ids
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0,
                                            stream=True, extra_body={"top_k": 5})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    sampled = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=1.0,
                                             seed=3, n=2)
    assert [c.index for c in sampled.choices] == [0, 1] and sampled.usage.prompt_tokens == len(prompt)
    assert [m.id for m in client.models.list().data] == ["tiny"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 500}, "max_tokens"),  # prompt + max_tokens over the context of 128
    ({"prompt": "x", "max_tokenz": 5}, "max_tokenz"),  # unknown field
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),  # accepted only at its no-op value
    ({"messages": [], "max_tokens": 2}, "messages"),
])
def test_bad_requests_are_400_naming_the_field(client, body, param):
    path = "/chat/completions" if "messages" in body else "/completions"
    with pytest.raises(openai.BadRequestError) as e:
        client.post(path, body=body, cast_to=object)
    error = e.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split("[")[0] in error["message"]


def test_malformed_json_and_the_api_key(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "x",', headers=auth)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # open without the key


def test_full_queue_is_429_and_the_server_goes_on(client, server, lm):
    from jaxlm.serving.engine import QueueFull, RequestParams

    engine, fillers = server.engine, []
    long = RequestParams(max_tokens=CFG.max_context - 8, ignore_eos=True)
    try:
        while len(fillers) < 20:  # every slot running and the queue full (admission happens between steps)
            try:
                fillers.append(engine.submit([5, 6, 7], long))
            except QueueFull:
                if engine.stats().running == ENGINE["max_slots"]:
                    break
                time.sleep(0.005)
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="tiny", prompt="x", max_tokens=2)
        assert e.value.status_code == 429 and e.value.body["code"] == "queue_full"
        assert e.value.response.headers["retry-after"] == "1"
    finally:
        for handle in fillers:
            handle.cancel()
    assert idle(engine)
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_disconnect_mid_stream_frees_slot_and_pages(server):
    engine = server.engine
    before = engine.stats().tokens_generated_total
    body = {"prompt": "ROMEO:", "max_tokens": 100, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["finish_reason"] is None
        assert engine.stats().running == 1 and engine.stats().pages_in_use > 0
    # the connection is closed: the engine cancels the request at its next step
    assert idle(engine, timeout_s=5)
    assert engine.stats().tokens_generated_total - before < 100


def test_metrics(client, server):
    client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=3)
    text = httpx.get(server.url + "/metrics").text
    for name in ("jaxlm_requests_running", "jaxlm_requests_waiting", "jaxlm_kv_pages_in_use", "jaxlm_kv_pages_total",
                 "jaxlm_prefix_cache_hits_total", "jaxlm_generation_tokens_total",
                 "jaxlm_generation_tokens_per_second", "jaxlm_time_to_first_token_seconds_bucket",
                 "jaxlm_inter_token_latency_seconds_bucket"):
        assert f"\n{name}" in text, name
    ttft = float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("jaxlm_time_to_first_token_seconds_count")))
    assert ttft >= 1
    assert 'jaxlm_http_responses_total{endpoint="/v1/completions",status="200"}' in text


def test_drain_finishes_running_streams_and_refuses_new_ones(lm):
    """What SIGTERM does (the subprocess test below sends the real signal), in-process."""
    from jaxlm.serving.engine import ServingEngine
    from jaxlm.serving.server import Server

    srv = Server(ServingEngine(lm, **ENGINE), lm, port=0, drain_s=10).start()
    got: list[str] = []

    def read():
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                          json={"prompt": "ROMEO:", "max_tokens": 40, "stream": True}) as r:
            got.extend(line for line in r.iter_lines() if line.startswith("data:"))

    reader = threading.Thread(target=read)
    reader.start()
    while not got:
        time.sleep(0.01)
    srv.drain()
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x"}, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    assert httpx.get(srv.url + "/health").json() == {"status": "draining"}
    srv.stop(timeout_s=30)
    reader.join(30)
    assert got[-1] == "data: [DONE]" and json.loads(got[-2][5:])["choices"][0]["finish_reason"] == "length"
    assert not srv._thread.is_alive()


def test_serve_bad_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    assert main(["serve", "--ckpt", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxlm serve: error:") and "missing" in err[0]


def _batch(model_dir, inp: Path, out: Path, *extra) -> int:
    return main(["generate", "--ckpt", str(model_dir), "--input", str(inp), "--output", str(out),
                 "--max-new-tokens", "6", "--max-slots", str(ENGINE["max_slots"]), *extra])


def test_batch_generate_resumes_and_drops_a_partial_line(model_dir, lm, tmp_path, capsys):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": i, "prompt": p} for i, p in enumerate(["ROMEO:", "JULIET: O", "To be", "Friends, Romans"])]
    rows.append({"id": "chat", "messages": MESSAGES})
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _batch(model_dir, inp, out) == 0
    full = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(full) == {0, 1, 2, 3, "chat"}
    ids = lm.tokenizer.encode_input("ROMEO:")
    assert full[0]["tokens"] == lm.generate_ids([ids], 6).tokens[0][:len(full[0]["tokens"])]
    assert full[0]["text"] == lm.continuation_text(ids, full[0]["tokens"])
    assert full["chat"]["text"] == lm.chat(MESSAGES, 6)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:7])  # as a run killed while writing its third line leaves it
    assert _batch(model_dir, inp, out) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole
    assert len(again) == 5 and {r["id"]: r for r in again} == full
    assert "2 already done" in capsys.readouterr().err


def test_batch_generate_bad_line_names_it_and_writes_nothing(model_dir, tmp_path, capsys):
    inp, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"id": 1, "prompt": "ROMEO:"}\n\n{"id": 2, "text": "no prompt"}\n')
    assert _batch(model_dir, inp, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 3" in err[0] and "prompt" in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_drains_and_exits_0(model_dir):
    """The real command: SIGTERM while a stream runs -> the stream ends, exit 0 (covered in-process by
    test_drain_finishes_running_streams_and_refuses_new_ones)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "jaxlm.cli.main", "serve", "--ckpt", str(model_dir), "--port",
                             str(port), "--max-slots", "2", "--drain-s", "20"], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.stream("POST", url + "/v1/completions", timeout=60,
                          json={"prompt": "ROMEO:", "max_tokens": 60, "stream": True}) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped" in proc.stderr.read()

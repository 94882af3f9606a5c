"""A flaky rollout server, against a real local HTTP server (stdlib, in a thread) that answers
from a script: requests that are safe to repeat (generation, GETs) are retried with exponential
backoff after HTTP 5xx answers, dropped connections and timeouts, each retry logged; the error
after the last retry names the URL, the status and the server's message; requests that are not
safe to repeat (a weight update) and client errors (4xx) are sent once. No vLLM needed: the
server speaks the few routes of vLLM's API that ``VLLMServerEngine`` uses.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from rlreason.config import ConfigError, GRPOConfig
from rlreason.loop.async_rollout import RolloutThread
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.errors import RolloutServerError, find_server_error, server_message
from rlreason.rollout.gloo_transfer import HTTPClient
from rlreason.rollout.vllm_server import VLLMServerEngine

DELAY = 0.01  # the first retry's wait (s): then 0.02, 0.04
ENGINE_DEAD = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                         "type": "InternalServerError", "param": None, "code": 500}}


def completion(n: int) -> dict[str, Any]:
    return {"choices": [{"index": i, "finish_reason": "stop", "token_ids": [5, 6, 0],
                         "logprobs": {"token_logprobs": [-0.1, -0.2, -0.3]}} for i in range(n)]}


DEFAULTS: dict[str, Any] = {  # what the server answers once a path's script is spent
    "health": {}, "v1/models": {"data": [{"id": "tiny"}]},
    "server_info": {"vllm_config": {"model_config": {"logprobs_mode": "processed_logprobs"},
                                    "weight_transfer_config": {"backend": "gloo"}}},
    "get_world_size": {"world_size": 0},  # no workers: the trainer is alone in its gloo group (a no-op broadcast)
}


class FlakyServer:
    """``script[path]``: the answers to the next requests for ``path``, in order: ``("status", code,
    body)``, ``("drop",)`` (close the connection without an answer), ``("sleep", s)`` (answer after
    ``s`` seconds). Then ``DEFAULTS``, or an empty JSON object. ``requests``: (method, path, body)."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path = self.path.lstrip("/").split("?")[0]
                with server.lock:
                    server.requests.append((self.command, path, body))
                    todo = server.script.get(path, [])
                    action = todo.pop(0) if todo else None
                if action and action[0] == "drop":
                    self.close_connection = True  # no status line: the client sees the connection closed
                    return
                if action and action[0] == "sleep":
                    time.sleep(action[1])
                code, payload = (action[1], action[2]) if action and action[0] == "status" else (200, None)
                if payload is None:
                    payload = completion(body["n"]) if path == "v1/completions" else DEFAULTS.get(path, {})
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(p == path for _, p, _ in self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = FlakyServer()
    yield s
    s.close()


def retries_logged(caplog) -> list[tuple]:
    """The retry lines' arguments: (url, attempt, attempts, error, wait)."""
    return [r.args for r in caplog.records if r.name == "rlreason.rollout" and "retrying" in r.msg]


def test_5xx_answers_and_dropped_connections_are_retried_with_doubling_waits(server, caplog):
    server.script["v1/completions"] = [("status", 500, ENGINE_DEAD), ("drop",), ("status", 503, "busy")]
    client = HTTPClient(server.url, max_retries=3, retry_delay_s=DELAY)
    with caplog.at_level(logging.WARNING, logger="rlreason.rollout"):
        out = client.post("v1/completions", {"n": 2}, retry=True)
    assert len(out["choices"]) == 2
    assert server.count("v1/completions") == 4
    lines = retries_logged(caplog)
    assert [(a[0], a[1], a[2], a[4]) for a in lines] == [
        (f"{server.url}/v1/completions", 1, 4, DELAY), (f"{server.url}/v1/completions", 2, 4, 2 * DELAY),
        (f"{server.url}/v1/completions", 3, 4, 4 * DELAY)]
    assert "HTTP 500: EngineCore encountered an issue" in lines[0][3]
    assert "RemoteDisconnected" in lines[1][3] or "Connection" in lines[1][3]  # closed without an answer
    assert "HTTP 503" in lines[2][3]
    message = caplog.records[0].getMessage()  # one line: url, attempt, error, wait
    assert "\n" not in message and f"{server.url}/v1/completions" in message and "retrying in 0.01s" in message


def test_a_timed_out_request_is_retried(server, caplog):
    server.script["v1/completions"] = [("sleep", 1.0)]
    client = HTTPClient(server.url, timeout_s=0.2, max_retries=1, retry_delay_s=DELAY)
    with caplog.at_level(logging.WARNING, logger="rlreason.rollout"):
        assert client.post("v1/completions", {"n": 1}, retry=True)["choices"]
    assert server.count("v1/completions") == 2
    assert "timed out" in retries_logged(caplog)[0][3]


def test_the_error_after_the_last_retry_names_url_status_and_message(server, caplog):
    # vLLM after its engine died: one HTTP 500 with the cause, then no answers
    server.script["v1/completions"] = [("status", 500, ENGINE_DEAD)] + [("drop",)] * 3
    client = HTTPClient(server.url, max_retries=3, retry_delay_s=DELAY)
    with caplog.at_level(logging.WARNING, logger="rlreason.rollout"), pytest.raises(RolloutServerError) as e:
        client.post("v1/completions", {"n": 1}, retry=True)
    err = e.value
    assert (err.url, err.status, err.attempts) == (f"{server.url}/v1/completions", 500, 4)
    assert err.message.startswith("EngineCore encountered an issue. See stack trace (above)")
    assert "the last attempt" in err.message  # ... and what the later attempts met
    assert str(err).startswith(f"vLLM server {server.url}/v1/completions: HTTP 500: EngineCore encountered")
    assert server.count("v1/completions") == 4 and len(retries_logged(caplog)) == 3
    assert isinstance(err, RuntimeError)  # as the HTTP errors it replaces: callers catching those still do


def test_no_answer_at_all_is_named_as_such(server):
    server.close()  # nothing listens any more: connection refused
    client = HTTPClient(server.url, max_retries=2, retry_delay_s=DELAY)
    with pytest.raises(RolloutServerError, match=r"no answer: URLError.*refused.*\(3 attempts\)") as e:
        client.request("v1/models")  # a GET: safe to repeat
    assert e.value.status is None


def test_client_errors_and_unsafe_requests_are_sent_once(server, caplog):
    client = HTTPClient(server.url, max_retries=3, retry_delay_s=DELAY)
    server.script["server_info"] = [("status", 404, {"detail": "Not Found"})]
    with caplog.at_level(logging.WARNING, logger="rlreason.rollout"):
        with pytest.raises(RolloutServerError, match="HTTP 404: Not Found") as e:
            client.request("server_info")
        assert e.value.status == 404 and server.count("server_info") == 1
        server.script["update_weights"] = [("status", 500, ENGINE_DEAD)]
        with pytest.raises(RolloutServerError, match="HTTP 500: EngineCore"):
            client.post("update_weights", {"update_info": {}})  # a POST is repeated only when marked safe
        assert server.count("update_weights") == 1
    assert retries_logged(caplog) == []


def test_max_retries_0_sends_once(server):
    server.script["v1/completions"] = [("status", 500, ENGINE_DEAD)]
    with pytest.raises(RolloutServerError, match="HTTP 500"):
        HTTPClient(server.url, max_retries=0, retry_delay_s=DELAY).post("v1/completions", {"n": 1}, retry=True)
    assert server.count("v1/completions") == 1


class _Tok:
    eos_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def _engine(server: FlakyServer, **kw: Any) -> VLLMServerEngine:
    return VLLMServerEngine(server.url, _Tok(), weight_transfer="gloo", connect_timeout_s=10, retry_delay_s=DELAY,
                            **kw)


def test_the_engine_retries_generation_requests(server):
    engine = _engine(server, max_retries=3)
    server.script["v1/completions"] = [("status", 500, ENGINE_DEAD), ("drop",)]
    groups = engine.generate([[1, 2], [3, 4, 5]], 2, SamplingConfig(max_tokens=8, temperature=1.0), seeds=[7, 8])
    assert [len(g) for g in groups] == [2, 2] and groups[0][0].token_ids == [5, 6, 0]
    sent = [b for m, p, b in server.requests if p == "v1/completions"]
    assert len(sent) == 4  # two prompts, two failures between them
    # a retry is the same request (same prompt, same seed: the same samples)
    assert {json.dumps(b, sort_keys=True) for b in sent} == {json.dumps(b, sort_keys=True) for b in sent[-2:]}
    assert sorted((b["prompt"], b["seed"]) for b in sent[-2:]) == [([1, 2], 7), ([3, 4, 5], 8)]


def test_the_engine_stops_after_the_retries_with_the_servers_error(server):
    engine = _engine(server, max_retries=2)
    server.script["v1/completions"] = [("status", 500, ENGINE_DEAD)] * 3
    with pytest.raises(RolloutServerError) as e:
        engine.generate([[1, 2]], 2, SamplingConfig(max_tokens=8, temperature=1.0))
    assert e.value.status == 500 and e.value.attempts == 3 and "EngineCore encountered" in str(e.value)
    assert e.value.url == f"{server.url}/v1/completions"


def test_a_failed_weight_update_is_not_retried_and_says_so(server):
    engine = _engine(server, max_retries=3)
    weights = [("w", torch.ones(3))]
    engine.load_weights(weights)  # a whole sync against the script's defaults
    assert [p for _, p, _ in server.requests if "weight" in p or p == "reset_prefix_cache"] == [
        "init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update",
        "reset_prefix_cache"]
    server.script["update_weights"] = [("status", 500, ENGINE_DEAD)]
    with pytest.raises(RolloutServerError, match="HTTP 500: EngineCore.*weight update failed midway.*resume") as e:
        engine.load_weights(weights)
    assert e.value.status == 500 and e.value.url == f"{server.url}/update_weights"
    assert server.count("update_weights") == 2 and server.count("finish_weight_update") == 1  # sent once, not finished
    engine.close()


def test_the_error_is_found_through_the_rollout_threads_wrapper():
    """async_rollouts: the rollout thread's error reaches the trainer wrapped in a RuntimeError."""
    err = RolloutServerError("http://h:1/v1/completions", 500, "EngineCore encountered an issue", 4)
    thread = RolloutThread()
    thread.submit(3, 2, lambda: (_ for _ in ()).throw(err))
    with pytest.raises(RuntimeError, match="rollout of the next batch failed") as e:
        thread.take(3)
    assert find_server_error(e.value) is err
    assert find_server_error(ValueError("a bug")) is None
    # what the trainer raises once it has saved a checkpoint: the same failure, where the run stopped added
    stopped = err.with_hint("stopped with a checkpoint in runs/x/checkpoints/step-0000003")
    assert (stopped.url, stopped.status, stopped.message, stopped.attempts) == (err.url, 500, err.message, 4)
    assert str(stopped).endswith("EngineCore encountered an issue (4 attempts); stopped with a checkpoint in "
                                 "runs/x/checkpoints/step-0000003")


def test_server_message_reads_vllms_error_forms():
    assert server_message(json.dumps(ENGINE_DEAD).encode()).startswith("EngineCore encountered")
    assert server_message(b'{"object": "error", "message": "bad seed"}') == "bad seed"
    assert server_message(b'{"detail": "Not Found"}') == "Not Found"
    assert server_message(b"Internal Server Error") == "Internal Server Error"


def test_retry_keys_are_validated():
    assert GRPOConfig().vllm_server_max_retries == 3
    with pytest.raises(ConfigError, match="'vllm_server_max_retries'"):
        GRPOConfig(vllm_server_max_retries=-1)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="'vllm_server_retry_delay'"):
            GRPOConfig(vllm_server_retry_delay=bad)

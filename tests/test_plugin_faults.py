"""Both Dify plugins, in the real dify_plugin runtime, against servers that misbehave.

A real ``steam-train serve`` cannot be made to stall, trickle keep-alives, drop a stream, answer
HTML or ignore ``stream: true`` on demand, so a small stdlib HTTP server (below) plays each
failure, chosen by the first path segment of the endpoint URL (``http://127.0.0.1:P/MODE/v1``).
The plugins are the built ``.difypkg`` files run as ``python -m main`` (see test_plugin_runtime.py).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.dify_driver import PluginProcess, plugin_python, unpack
from steam_persona.plugin.package import PackageConfig, run

pytestmark = pytest.mark.slow

CHAT = {"type": "model", "provider": "steam_persona", "model_type": "llm", "model": "steam-persona"}
REVIEW = {"type": "tool", "provider": "steam_persona_review"}
TIMEOUT_S = 2  # the request_timeout credential of the deadline tests
STALL_S = 20  # how long the fake server stalls: far past TIMEOUT_S, so only the deadline can end the call


def _chunk(text: str) -> bytes:
    event = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return f"data: {json.dumps(event)}\n\n".encode()


def _event(choices: list) -> dict:
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}


def _finish() -> bytes:
    return f"data: {json.dumps(_event([{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]))}\n\n".encode()


CLOSED: list[float] = []  # when the fake saw a client close a "watch" connection (time.monotonic())
COMPLETION = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "usage":
              {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


class FakeServer(BaseHTTPRequestHandler):
    """``GET …/models`` answers one model; ``POST …/chat/completions`` fails as its MODE says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream_start(self, chunked: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
        self.end_headers()
        self._chunked = chunked

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if self._chunked else data)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path.endswith(("/health", "/props")):
            if self.path.startswith("/hang"):  # a proxy that stalls on paths it does not know
                time.sleep(STALL_S)
            self._send(200, json.dumps({"n_ctx": "2048"}).encode())  # n_ctx as text
            return
        self._send(200, json.dumps({"object": "list", "data": [{"id": "m"}]}).encode())

    def do_POST(self) -> None:
        self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            getattr(self, "mode_" + self.path.split("/")[1])()
        except (BrokenPipeError, ConnectionResetError):  # the plugin gave up on it: what the test wants
            self.close_connection = True

    def mode_cut(self) -> None:  # the body ends (connection closed) before data: [DONE]
        self._stream_start()
        self._write(_chunk("tok "))
        self.close_connection = True

    def mode_killed(self) -> None:  # the server dies inside a chunked body (requests: ChunkedEncodingError)
        self._stream_start(chunked=True)
        self._write(_chunk("tok "))
        self.wfile.write(b"ff\r\ndata: {\"partial")
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def mode_garbage(self) -> None:
        self._stream_start()
        self._write(_chunk("tok ") + b"data: {not json\n\n" + b"data: [DONE]\n\n")
        self.close_connection = True

    def mode_errevent(self) -> None:
        self._stream_start()
        error = {"message": "context overflow mid-stream", "type": "invalid_request_error"}
        self._write(_chunk("tok ") + f"data: {json.dumps({'error': error})}\n\n".encode())
        self.close_connection = True

    def mode_errfail(self) -> None:  # an error event without code or type, after HTTP 200
        self._stream_start()
        self._write(_chunk("tok ") + f"data: {json.dumps({'error': {'message': 'out of memory'}})}\n\n".encode())
        self.close_connection = True

    def mode_errobject(self) -> None:  # a bare OpenAI error object, as older vLLM streams it
        self._stream_start()
        error = {"object": "error", "message": "prompt too long", "type": "BadRequestError", "code": 400}
        self._write(f"data: {json.dumps(error)}\n\n".encode())
        self.close_connection = True

    def mode_errnamed(self) -> None:  # an event named "error" whose data has a message only
        self._stream_start()
        self._write(_chunk("tok ") + b'event: error\ndata: {"message": "overloaded"}\n\n')
        self.close_connection = True

    def mode_heartbeat(self) -> None:  # events without choices (or with null ones) between real ones; a BOM first
        self._stream_start()
        beat = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        self._write(b"\xef\xbb")  # the byte order mark split over two reads
        self._write(b"\xbf" + _chunk("h") + f"data: {json.dumps(beat)}\n\n".encode() + _chunk("i")
                    + f"data: {json.dumps({**beat, 'choices': None})}\n\n".encode() + _finish() + b"data: [DONE]\n\n")
        self.close_connection = True

    def mode_nodone(self) -> None:  # complete (finish_reason, usage) but no data: [DONE]
        self._stream_start()
        self._write(_chunk("hi") + _finish() + b"data: " + json.dumps({**_event([]), "usage": COMPLETION["usage"]})
                    .encode() + b"\n\n")
        self.close_connection = True

    def mode_ssefull(self) -> None:  # valid SSE: event/id/retry fields, comments, CRLF, a data field split in two
        self._stream_start()
        first = json.dumps(_event([{"index": 0, "delta": {"content": "h"}, "finish_reason": None}]), indent=1)
        lines = ["retry: 1000", ": hello", "event: message", "id: 1", *("data: " + x for x in first.split("\n")), "",
                 "event: message", "id: 2", "data:" + _finish()[6:].decode().strip(), "", "data: [DONE]", "", ""]
        body = "\r\n".join(lines).encode()
        for i in range(0, len(body), 7):  # small pieces: CRLF pairs split across reads too
            self._write(body[i:i + 7])

    def mode_watch(self) -> None:  # a stream that stalls; records when the client closed the connection
        self._stream_start()
        self._write(_chunk("tok "))
        self._until_closed()

    def mode_watchslow(self) -> None:  # a reply that never starts (a long prompt); records the client's close
        self._until_closed()

    def _until_closed(self) -> None:
        self.connection.settimeout(STALL_S)
        try:
            self.connection.recv(1)
        except OSError:
            pass
        CLOSED.append(time.monotonic())
        self.close_connection = True

    def mode_html(self) -> None:
        self._send(200, b"<html><body>proxy login</body></html>", "text/html")

    def mode_json(self) -> None:  # a server that ignores stream: true
        self._send(200, json.dumps(COMPLETION).encode())

    def mode_stall(self) -> None:  # headers, one chunk, then nothing
        self._stream_start()
        self._write(_chunk("tok "))
        time.sleep(STALL_S)
        self.close_connection = True

    def mode_trickle(self) -> None:  # SSE keep-alive comments for ever: each read succeeds
        self._stream_start()
        for _ in range(STALL_S * 4):
            self._write(b": keep-alive\n\n")
            time.sleep(0.25)
        self.close_connection = True

    def mode_slow(self) -> None:  # a blocking answer that comes too late
        time.sleep(STALL_S)
        self._send(200, json.dumps(COMPLETION).encode())

    def mode_late(self) -> None:  # a blocking answer after 2 s of silence
        time.sleep(2)
        self._send(200, json.dumps(COMPLETION).encode())

    def mode_latefirst(self) -> None:  # a stream whose first token comes after 2 s (a long prompt on a CPU)
        self._stream_start()
        time.sleep(2)
        self._write(_chunk("hi") + _finish() + b"data: [DONE]\n\n")
        self.close_connection = True

    def mode_bad502(self) -> None:  # nginx in front of a server that is down
        self._send(502, b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad"
                        b" Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
                        + b"<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n" * 6, "text/html")

    def mode_hangup(self) -> None:  # takes the request, then dies before answering (crash, restart)
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def mode_model(self) -> None:  # a completion whose text is the model the request named
        if self.path != "/model/v1/chat/completions":
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            return
        model = json.loads(self._body or b"{}").get("model")
        self._send(200, json.dumps({**COMPLETION, "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": repr(model)}}]}).encode())

    def mode_echo(self) -> None:  # a completion whose text is the messages the server received
        body = json.loads(self._body or b"{}")
        self._send(200, json.dumps({**COMPLETION, "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": json.dumps(body.get("messages"))}}]}).encode())

    def mode_busy(self) -> None:
        self._send(429, json.dumps({"error": {"message": "too many requests"}}).encode())

    def mode_hang(self) -> None:
        self.mode_json()

    def mode_gone(self) -> None:  # a proxy that knows no such path and says nothing
        self._send(404, b"", "text/plain")

    def mode_nomodel(self) -> None:  # what vLLM answers for an unknown model
        self._send(404, json.dumps({"error": {"message": "The model `x` does not exist."}}).encode())


@pytest.fixture(scope="module")
def fake() -> str:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("plugins")
    return {k: unpack(p, out / k) for k, p in run(PackageConfig(out=str(out / "dist"))).items()}


@pytest.fixture(scope="module")
def chat(plugins):
    with PluginProcess(plugins["chat"], plugin_python(plugins["chat"])) as p:
        yield p


@pytest.fixture(scope="module")
def review(plugins):
    with PluginProcess(plugins["review"], plugin_python(plugins["review"])) as p:
        yield p


def invoke(chat, fake: str, mode: str, stream: bool = True, **creds):
    credentials = {"endpoint_url": f"{fake}/{mode}/v1", "context_size": "2048", **creds}
    return chat.request({**CHAT, "action": "invoke_llm", "credentials": credentials,
                         "prompt_messages": [{"role": "user", "content": "Hi"}],
                         "model_parameters": {"max_tokens": 8}, "stop": None, "tools": None, "stream": stream},
                        timeout=STALL_S)


def _closed_at(wait_s: float = 3.0) -> float | None:
    """When the fake saw the client close a "watch" connection (its handler thread notices within ms)."""
    end = time.monotonic() + wait_s
    while not CLOSED and time.monotonic() < end:
        time.sleep(0.05)
    return CLOSED[0] if CLOSED else None


def text_of(reply) -> str:
    return "".join(c["delta"]["message"]["content"] or "" for c in reply.result)


@pytest.mark.parametrize("mode, error_type, words", [
    ("cut", "InvokeServerUnavailableError", "stopped mid-reply (the stream ended without [DONE] or a finish_reason)"),
    ("killed", "InvokeServerUnavailableError", "stopped mid-reply (ProtocolError"),
    ("garbage", "InvokeServerUnavailableError", "sent a stream event that is not JSON: '{not json'"),
    ("errevent", "InvokeBadRequestError", "refused the request mid-reply: context overflow mid-stream"),
    ("errfail", "InvokeServerUnavailableError", "failed mid-reply: out of memory"),
    ("errobject", "InvokeBadRequestError", "refused the request (HTTP 400): prompt too long"),
    ("errnamed", "InvokeServerUnavailableError", "failed mid-reply: overloaded"),
    ("html", "InvokeServerUnavailableError", "answered text/html, not an event stream: an HTML page: proxy login"),
    ("busy", "InvokeRateLimitError", "the server is busy (HTTP 429): too many requests"),
])
def test_broken_streams_are_invoke_errors_never_a_quiet_success(chat, fake, mode, error_type, words):
    reply = invoke(chat, fake, mode)
    assert reply.error is not None, f"{mode}: reported as success with {text_of(reply)!r}"
    assert reply.error["error_type"] == error_type and words in reply.error["message"], reply.error
    assert "\n" not in reply.error["message"] and "HTTP 500" not in reply.error["message"]
    assert not [c for c in reply.result if c["delta"].get("finish_reason")]  # no final chunk was sent
    if mode != "busy":  # the server was reached: no question whether it runs, no Docker advice
        assert "is `steam-train serve` running" not in reply.error["message"], reply.error


def test_a_json_answer_to_a_stream_request_keeps_its_text(chat, fake):
    reply = invoke(chat, fake, "json")
    assert reply.error is None, reply.error
    final = reply.result[-1]["delta"]
    assert (text_of(reply), final["finish_reason"]) == ("hi", "stop")
    assert (final["usage"]["prompt_tokens"], final["usage"]["completion_tokens"]) == (3, 1)


@pytest.mark.parametrize("mode, error_type, words", [
    ("html", "InvokeServerUnavailableError", "did not answer JSON (text/html): an HTML page: proxy login"),
    ("nomodel", "InvokeBadRequestError", "refused the request (HTTP 404): The model `x` does not exist."),
])
def test_blocking_answers_that_are_no_completion(chat, fake, mode, error_type, words):
    reply = invoke(chat, fake, mode, stream=False)
    assert reply.error["error_type"] == error_type and words in reply.error["message"], reply.error
    assert "must be the API base" not in reply.error["message"]  # a wrong model is no wrong path


@pytest.mark.parametrize("mode, text", [("nodone", "hi"), ("ssefull", "h"), ("heartbeat", "hi")])
def test_complete_streams_in_any_valid_sse_form_keep_their_text(chat, fake, mode, text):
    reply = invoke(chat, fake, mode)
    assert reply.error is None, reply.error
    assert (text_of(reply), reply.result[-1]["delta"]["finish_reason"]) == (text, "stop")


@pytest.mark.parametrize("mode, stream", [("stall", True), ("trickle", True), ("slow", False)])
def test_request_timeout_bounds_the_whole_invoke(chat, fake, mode, stream):
    reply = invoke(chat, fake, mode, stream=stream, request_timeout=str(TIMEOUT_S))
    assert reply.error["error_type"] == "InvokeServerUnavailableError", reply.error
    assert f"within {TIMEOUT_S} s; raise the request_timeout setting" in reply.error["message"]
    assert "Docker" not in reply.error["message"] and "running there" not in reply.error["message"]
    assert TIMEOUT_S - 0.05 <= reply.seconds < TIMEOUT_S + 3  # two processes' clocks: 1.999 s was seen
    if mode == "stall":  # its one event (no chunked transfer, 150 bytes) reached Dify as it came
        assert text_of(reply) == "tok "


@pytest.mark.parametrize("mode, stream", [("watch", True), ("watchslow", True), ("watchslow", False)])
def test_a_timed_out_invoke_closes_its_connection_so_the_server_stops(chat, fake, mode, stream):
    CLOSED.clear()
    start = time.monotonic()
    reply = invoke(chat, fake, mode, stream=stream, request_timeout=str(TIMEOUT_S))
    assert "raise the request_timeout setting" in reply.error["message"], reply.error
    closed = _closed_at()
    assert closed is not None and closed - start < TIMEOUT_S + 1.5, "the connection was left open"


def test_saving_credentials_is_bounded_when_health_and_props_hang(chat, fake):
    creds = {"endpoint_url": f"{fake}/hang/v1", "context_size": "4096"}
    reply = chat.request({**CHAT, "action": "validate_model_credentials", "credentials": creds}, timeout=STALL_S)
    assert reply.error is None and reply.seconds < 3 + 2  # PROBE_TIMEOUT for /health and /props together
    text_ctx = chat.request({**CHAT, "action": "validate_model_credentials", "credentials": {
        **creds, "endpoint_url": f"{fake}/json/v1"}})
    assert "larger than the server's n_ctx 2048" in text_ctx.error["message"]  # n_ctx "2048" (text) is still read


@pytest.mark.parametrize("mode", ["slow", "watchslow"])
def test_review_tool_is_bounded_by_request_timeout(review, fake, mode):
    CLOSED.clear()
    creds = {"endpoint_url": f"{fake}/{mode}/v1", "request_timeout": str(TIMEOUT_S)}
    reply = review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review", "credentials": creds,
                            "tool_parameters": {"game_name": "Celeste"}}, timeout=STALL_S)
    assert reply.error["error_type"] == "ReviewError", reply.error
    assert reply.error["message"].endswith(f"did not finish its answer within {TIMEOUT_S} s; raise the request_timeout"
                                           f" setting")
    assert TIMEOUT_S <= reply.seconds < TIMEOUT_S + 3
    if mode == "watchslow":  # the connection was closed, so the server can stop
        assert _closed_at(), "the connection was left open"


def test_review_tool_waits_the_whole_request_timeout_for_a_silent_answer(plugins, fake, tmp_path):
    """A non-streamed review sends nothing until it is written: no per-read cap may end it early
    (here the chat plugin's per-read limit is cut to 0.5 s, the answer comes after 2 s of silence)."""
    copy = shutil.copytree(plugins["review"], tmp_path / "review")
    client = copy / "server_client.py"
    client.write_text(client.read_text().replace("READ_TIMEOUT = 300.0", "READ_TIMEOUT = 0.5"))
    creds = {"endpoint_url": f"{fake}/late/v1", "request_timeout": "10"}
    with PluginProcess(copy, plugin_python(copy)) as review:
        reply = review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review",
                                "credentials": creds, "tool_parameters": {"game_name": "Celeste"}}, timeout=STALL_S)
    assert reply.error is None, reply.error
    assert reply.result[0]["message"]["text"] == "hi" and reply.seconds >= 2


@pytest.mark.parametrize("mode, stream", [("late", False), ("latefirst", True)])
def test_chat_waits_the_whole_request_timeout_for_a_silent_answer(plugins, fake, tmp_path, mode, stream):
    """A blocking reply sends nothing until it is written, a stream nothing until the prompt is read:
    a request_timeout the user set is the only bound (here the per-read limit of credentials saved
    without one is cut to 0.5 s; the answer comes after 2 s of silence)."""
    copy = shutil.copytree(plugins["chat"], tmp_path / "chat")
    client = copy / "server_client.py"
    client.write_text(client.read_text().replace("READ_TIMEOUT = 300.0", "READ_TIMEOUT = 0.5"))
    with PluginProcess(copy, plugin_python(copy)) as chat:
        reply = invoke(chat, fake, mode, stream=stream, request_timeout="10")
        legacy = invoke(chat, fake, mode, stream=stream)  # saved before request_timeout existed: as the SDK did
    assert reply.error is None, reply.error
    assert text_of(reply) == "hi" and reply.seconds >= 2
    assert legacy.error["error_type"] == "InvokeServerUnavailableError", legacy.error
    assert "raise the request_timeout setting" in legacy.error["message"] and legacy.seconds < 2


def _invoke_params(chat, fake: str, **params):
    return chat.request({**CHAT, "action": "invoke_llm", "credentials": {
        "endpoint_url": f"{fake}/json/v1", "context_size": "2048", "max_tokens_to_sample": "512"},
        "prompt_messages": [{"role": "user", "content": "Hi"}], "model_parameters": params, "stop": None,
        "tools": None, "stream": False})


@pytest.mark.parametrize("params, words", [
    ({"max_tokens": 4096}, "max_tokens should be less than or equal to 512; change it in the app's model"
                           " parameters in Dify or raise *Upper bound for max tokens* in the model's settings"),
    ({"seed": -1}, "seed should be greater than or equal to 0"),
    ({"max_tokens": 16.5}, "max_tokens should be int"),
    ({"temperature": "warm"}, "temperature should be float"),
    ({"response_format": "json_schema"}, "response_format should be one of"),
])
def test_parameters_out_of_their_rules_are_bad_requests_not_plugin_crashes(chat, fake, params, words):
    reply = _invoke_params(chat, fake, **params)
    assert reply.error["error_type"] == "InvokeBadRequestError", reply.error
    assert words in reply.error["message"], reply.error


def test_numbers_saved_as_text_or_whole_floats_are_read_as_numbers(chat, fake):
    reply = _invoke_params(chat, fake, max_tokens="16", seed=1.0, temperature="0.5", top_p=1)
    assert reply.error is None, reply.error
    assert text_of(reply) == "hi"


def test_a_server_that_dies_before_answering_is_no_docker_problem(chat, review, fake):
    replies = [invoke(chat, fake, "hangup", stream=stream) for stream in (True, False)]
    replies.append(review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review", "credentials": {
        "endpoint_url": f"{fake}/hangup/v1"}, "tool_parameters": {"game_name": "Celeste"}}))
    for reply in replies:
        message = reply.error["message"]
        assert "closed the connection without answering" in message and "check its log" in message, reply.error
        assert "Docker" not in message and "cannot be reached" not in message
    assert [r.error["error_type"] for r in replies[:2]] == ["InvokeServerUnavailableError"] * 2


def test_a_model_name_pasted_with_spaces_is_sent_without_them(chat, fake):
    reply = invoke(chat, fake, "model", stream=False, endpoint_model_name=" steam-persona \t")
    assert reply.error is None and text_of(reply) == "'steam-persona'", reply.error


def test_a_pasted_chat_completions_url_still_works(chat, fake):
    reply = chat.request({**CHAT, "action": "invoke_llm", "credentials": {
        "endpoint_url": f"{fake}/model/v1/chat/completions", "context_size": "2048"}, "stop": None, "tools": None,
        "prompt_messages": [{"role": "user", "content": "Hi"}], "model_parameters": {}, "stream": False})
    assert reply.error is None and text_of(reply) == "'steam-persona'", reply.error  # (the Dify name)


def test_a_proxys_html_error_page_reads_as_its_text(chat, review, fake):
    replies = [invoke(chat, fake, "bad502", stream=stream) for stream in (True, False)]
    replies.append(review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review", "credentials": {
        "endpoint_url": f"{fake}/bad502/v1"}, "tool_parameters": {"game_name": "Celeste"}}))
    for reply in replies:
        assert reply.error["message"].endswith("the server failed (HTTP 502): an HTML page: 502 Bad Gateway nginx"), \
            reply.error


@pytest.mark.parametrize("mode", ["html", "busy", "stall", "dead"])
def test_a_password_in_the_endpoint_url_never_reaches_an_error(chat, review, fake, mode):
    """``http://user:pass@proxy/v1`` (a reverse proxy's basic auth): Dify shows and logs the messages."""
    port = fake.rsplit(":", 1)[1] if mode != "dead" else "1"
    url = f"http://admin:s3cret@127.0.0.1:{port}/{mode}/v1"
    creds = {"endpoint_url": url, "context_size": "2048", "request_timeout": str(TIMEOUT_S)}
    replies = [chat.request({**CHAT, "action": "invoke_llm", "credentials": creds, "stop": None, "tools": None,
                             "prompt_messages": [{"role": "user", "content": "Hi"}], "model_parameters": {},
                             "stream": stream}, timeout=STALL_S) for stream in (True, False)]
    replies.append(chat.request({**CHAT, "action": "validate_model_credentials", "credentials": creds},
                                timeout=STALL_S))
    replies.append(review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review",
                                   "credentials": creds, "tool_parameters": {"game_name": "Celeste"}}, timeout=STALL_S))
    for reply in replies:
        assert reply.error and "s3cret" not in reply.error["message"], reply.error
        assert "127.0.0.1" not in reply.error["message"] or "admin:***@127.0.0.1" in reply.error["message"]


@pytest.mark.parametrize("field, value", [("context_size", "abc"), ("context_size", "-5"), ("context_size", ""),
                                          ("max_tokens_to_sample", "0"), ("request_timeout", "soon")])
def test_credentials_must_be_positive_whole_numbers(chat, fake, field, value):
    creds = {"endpoint_url": f"{fake}/json/v1", "context_size": "2048", field: value}
    reply = chat.request({**CHAT, "action": "validate_model_credentials", "credentials": creds})
    assert reply.error["error_type"] == "CredentialsValidateFailedError", reply.error
    assert reply.error["message"] == f"{field} must be a whole number of at least 1, not {value!r}"
    if not value:  # (an empty context_size is the SDK's 4096 after saving)
        return
    # saved before this check existed: Dify's error types, never the plugin's own
    schema = chat.request({**CHAT, "action": "get_ai_model_schemas", "credentials": creds})
    assert schema.error["error_type"] == "CredentialsValidateFailedError", schema.error
    assert "must be a whole number of at least 1" in schema.error["message"]
    counted = chat.request({**CHAT, "action": "get_llm_num_tokens", "credentials": creds, "tools": None,
                            "prompt_messages": [{"role": "user", "content": "hi"}]})
    answered = invoke(chat, fake, "json", **{field: value})
    for reply in (counted, answered):  # (the SDK reads the schema before it counts or invokes)
        assert reply.error["error_type"] in ("CredentialsValidateFailedError", "InvokeBadRequestError"), reply.error
        assert reply.error["message"].endswith("open the model's settings in Dify and save them again")
    key = invoke(chat, fake, "json", api_key="k19\nX")
    assert key.error["error_type"] == "InvokeAuthorizationError", key.error


def test_max_tokens_to_sample_above_context_size_is_refused_when_saved(chat, fake):
    creds = {"endpoint_url": f"{fake}/json/v1", "context_size": "2048", "max_tokens_to_sample": "99999999"}
    reply = chat.request({**CHAT, "action": "validate_model_credentials", "credentials": creds})
    assert reply.error["error_type"] == "CredentialsValidateFailedError", reply.error
    assert "max_tokens_to_sample 99999999 is larger than context_size 2048" in reply.error["message"]
    ok = chat.request({**CHAT, "action": "validate_model_credentials", "credentials": {
        "endpoint_url": f"{fake}/json/v1", "context_size": "1024"}})  # unset: its default 2048 is no error
    assert ok.error is None, ok.error


@pytest.mark.parametrize("value", [1.5, "0.9"])
def test_review_max_tokens_that_are_no_whole_number_are_refused(review, fake, value):
    reply = review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review",
                            "credentials": {"endpoint_url": f"{fake}/json/v1"},
                            "tool_parameters": {"game_name": "Celeste", "max_tokens": value}})
    assert reply.error["error_type"] == "ReviewError", reply.error
    assert reply.error["message"].endswith(f"max_tokens must be a whole number of tokens, not {value!r}")


def test_a_404_with_an_empty_body_reads_well(review, fake):
    reply = review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review",
                            "credentials": {"endpoint_url": f"{fake}/gone/v1"}, "tool_parameters": {"game_name": "x"}})
    assert reply.error["error_type"] == "ReviewError", reply.error
    assert f"{fake}/gone/v1/chat/completions answered HTTP 404 (an empty body); the endpoint URL must be the API" \
           f" base that ends in /v1" in reply.error["message"]


def test_an_api_key_with_invisible_or_foreign_characters(chat, review, fake):
    pasted = {"endpoint_url": f"{fake}/json/v1", "context_size": "2048", "api_key": " k17\u200b\n"}
    reply = invoke(chat, fake, "json", stream=False, api_key=" k17\u200b")
    assert reply.error is None and text_of(reply) == "hi"  # zero-width space and spaces dropped
    for key in ("k17\u200b密钥", "k1 7", "k17\nx"):
        bad = chat.request({**CHAT, "action": "validate_model_credentials", "credentials": {**pasted, "api_key": key}})
        assert bad.error["error_type"] == "CredentialsValidateFailedError"
        assert bad.error["message"].startswith("the API key has a character an HTTP header cannot carry at position")
        tool = review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review",
                               "credentials": {**pasted, "api_key": key}, "tool_parameters": {"game_name": "Celeste"}})
        assert tool.error["error_type"] == "ReviewError" and "HTTP header cannot carry" in tool.error["message"]


def test_invalid_port_is_a_clear_error(chat):
    reply = chat.request({**CHAT, "action": "invoke_llm", "credentials": {"endpoint_url": "http://127.0.0.1:99999/v1"},
                          "prompt_messages": [{"role": "user", "content": "Hi"}], "model_parameters": {},
                          "stop": None, "tools": None, "stream": False})
    assert reply.error["error_type"] == "InvokeBadRequestError"
    assert "has an invalid port (1-65535)" in reply.error["message"]


def test_tool_results_and_tool_calls_in_the_history_reach_the_model_as_text(chat, fake):
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
               {"role": "tool", "content": "sunny", "tool_call_id": "c1"}]
    reply = chat.request({**CHAT, "action": "invoke_llm", "credentials": {"endpoint_url": f"{fake}/echo/v1"},
                          "prompt_messages": history, "model_parameters": {}, "stop": None, "tools": None,
                          "stream": False})
    assert reply.error is None, reply.error
    sent = json.loads(reply.result[0]["delta"]["message"]["content"])  # the fake echoes the messages it got
    assert sent == [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": ""},
                    {"role": "user", "content": "Tool result (c1):\nsunny"}]


def test_system_and_assistant_part_lists_are_flattened_like_user_ones(chat, fake):
    parts = [{"type": "text", "data": "You are terse."}, {"type": "text", "data": "Answer in English."}]
    history = [{"role": "system", "content": parts}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": [{"type": "text", "data": "Hello."}]},
               {"role": "user", "content": "more"}]
    for stream in (True, False):
        reply = chat.request({**CHAT, "action": "invoke_llm", "credentials": {"endpoint_url": f"{fake}/echo/v1"},
                              "prompt_messages": history, "model_parameters": {}, "stop": None, "tools": None,
                              "stream": stream})
        assert reply.error is None, reply.error
        sent = json.loads(text_of(reply))  # the fake echoes the messages it got
        assert sent == [{"role": "system", "content": "You are terse.\nAnswer in English."},
                        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "more"}]


@pytest.mark.parametrize("part", [{"type": "document", "format": "pdf", "mime_type": "application/pdf",
                                   "base64_data": "JVBERi0=", "url": ""},
                                  {"type": "audio", "format": "mp3", "mime_type": "audio/mpeg",
                                   "base64_data": "AAAA", "url": ""}])
def test_document_and_audio_attachments_are_refused_not_dropped(chat, fake, part):
    content = [{"type": "text", "data": "Summarise this."}, part]
    reply = chat.request({**CHAT, "action": "invoke_llm", "credentials": {"endpoint_url": f"{fake}/echo/v1"},
                          "prompt_messages": [{"role": "user", "content": content}], "model_parameters": {},
                          "stop": None, "tools": None, "stream": False})
    assert reply.error["error_type"] == "InvokeBadRequestError"
    article = "an" if part["type"] == "audio" else "a"
    assert f"message 0 has {article} {part['type']} attachment, and this model reads text only" in reply.error["message"]


def test_num_tokens_fallback_counts_a_persona_and_is_bounded(chat, fake):
    messages = [{"role": "user", "content": "hi"}]
    reply = chat.request({**CHAT, "action": "get_llm_num_tokens", "credentials": {"endpoint_url": f"{fake}/slow/v1"},
                          "prompt_messages": messages, "tools": None}, timeout=STALL_S)
    assert reply.seconds < 5 + 2  # one shared TOKENIZE_TIMEOUT, not one per endpoint
    # no tokenizer answered: the estimate includes the persona the server would add (it was 3 tokens)
    assert reply.result[0]["num_tokens"] > 40


@pytest.mark.parametrize("url", ["", None, "  "])
def test_an_empty_endpoint_url_says_so(chat, review, url):
    creds = {"endpoint_url": url, "context_size": "2048"}
    checked = chat.request({**CHAT, "action": "validate_model_credentials", "credentials": creds})
    tool = review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review", "credentials": creds,
                           "tool_parameters": {"game_name": "Celeste"}})
    for reply in (checked, tool):
        assert reply.error["message"].startswith("the endpoint URL is empty; give the server's base URL"), reply.error


def test_https_to_a_plain_http_server_says_use_http(chat, review, fake):
    creds = {"endpoint_url": fake.replace("http://", "https://") + "/json/v1", "context_size": "2048"}
    reply = chat.request({**CHAT, "action": "invoke_llm", "credentials": creds, "stop": None, "tools": None,
                          "prompt_messages": [{"role": "user", "content": "Hi"}], "model_parameters": {},
                          "stream": False})
    tool = review.request({**REVIEW, "action": "invoke_tool", "tool": "write_steam_review", "credentials": creds,
                           "tool_parameters": {"game_name": "Celeste"}})
    assert reply.error["error_type"] == "InvokeServerUnavailableError"
    for error in (reply.error, tool.error):
        assert "TLS handshake" in error["message"] and "use http://" in error["message"], error
        assert "Dify runs plugins inside Docker" not in error["message"]

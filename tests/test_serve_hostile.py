"""Hostile and odd clients against a real `steam-train serve` process (SmolLM2): inputs that crashed,
500'd, blocked or were silently accepted by llama-cpp-python's own server. One server for the
module; every case ends with the same process still answering, so a crash fails the next check
instead of the test run."""

from __future__ import annotations

import gzip
import json
import re
import signal
import socket
import threading
import time
import zlib

import httpx
import pytest

from tests.serving import assert_one_505_for_http2, log_rows, send_raw, start_server

KEY = "hostile-key-51c"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Say hi."}]
PERSONA = "You are Lao G, a grumpy reviewer. persona-marker-4417"


@pytest.fixture(scope="module")
def request_log(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile") / "requests.jsonl"


@pytest.fixture(scope="module")
def server(smollm2_gguf, request_log):
    with start_server(smollm2_gguf, api_key=KEY, extra_args=(
            "--system", PERSONA, "--max_tokens_cap", "24", "--request_timeout", "20",
            "--cors_origins", "http://good.example", "--read_timeout", "2", "--log_file", request_log)) as srv:
        yield srv



@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=60) as c:
        yield c


def _error(r, status, code=None, param=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    if code:
        assert err["code"] == code, err
    if param:
        assert err["param"] == param, err
    assert PERSONA not in r.text and ".gguf" not in r.text and "site-packages" not in r.text  # no persona, no paths
    return err


def _alive(client):
    r = client.post(CHAT, json={"messages": HI, "max_tokens": 2})
    assert r.status_code == 200, r.text
    return r.json()


def test_inputs_that_crashed_the_process_get_400(client):
    _error(client.post(CHAT, json={"messages": HI, "grammar": "root ::= ("}), 400, "invalid_grammar", "grammar")
    _error(client.post(CHAT, json={"messages": HI, "grammar": "root ::= undefined-rule"}), 400, "invalid_grammar")
    for bad in (999_999_999, -5, 49152):
        _error(client.post("/extras/detokenize", json={"tokens": [1, bad]}), 400, "invalid_value", "tokens[1]")
    _alive(client)
    ok = client.post(CHAT, json={"messages": HI, "grammar": 'root ::= "yes" | "no"', "max_tokens": 4, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] in ("yes", "no")
    assert client.post("/extras/detokenize", json={"tokens": [28, 29]}).json() == {"text": ",-"}


def test_grammars_the_vocabulary_cannot_follow_are_a_400_not_an_abort(client):
    """``root ::= "\\u0000"`` compiles, but no token spells NUL: llama.cpp's grammar sampler then picked a
    refused token and aborted the process (GGML_ABORT), at once or after some tokens."""
    for grammar in ('root ::= "\\u0000"', 'root ::= "ab" "\\u0000"'):
        _error(client.post(CHAT, json={"messages": HI, "grammar": grammar, "max_tokens": 8}), 400, "invalid_grammar",
               "grammar")
        r = client.post(CHAT, json={"messages": HI, "grammar": grammar, "max_tokens": 8, "stream": True})
        if r.status_code == 200:  # tokens were streamed before the dead end: the stream ends with the error
            events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
            assert json.loads(events[-1])["error"]["code"] == "invalid_grammar" and len(events) > 1
        else:
            _error(r, 400, "invalid_grammar", "grammar")
    # a grammar that is complete while min_tokens refuses the end it requires ends there, as before
    out = client.post(CHAT, json={"messages": HI, "grammar": 'root ::= "yes"', "min_tokens": 5, "max_tokens": 8}).json()
    assert out["choices"][0]["message"]["content"] == "yes"
    _alive(client)


def test_inputs_that_gave_500_get_openai_shaped_400(client):
    _error(client.post(CHAT, content=b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'), 400, "invalid_json")
    _error(client.post(CHAT, content=b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\udfff"]}'),
           400, "invalid_json")
    _error(client.post(CHAT, content=b"[" * 100_000), 400, "invalid_json")
    for digits in (101, 5000):  # Python refuses ints over 4300 digits with a bare ValueError (was a 500)
        big = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * digits + b"}"
        _error(client.post(CHAT, content=big), 400, "invalid_json")
    _error(client.post(CHAT, json={"messages": HI, "logit_bias": {"abc": 1}}), 400, "invalid_value", "logit_bias")
    _error(client.post(CHAT, json={"messages": HI, "logit_bias": {"70000": 1}}), 400, "invalid_value", "logit_bias")
    _error(client.post(CHAT, json={"messages": HI, "logit_bias": {"5": 1000}}), 400, "invalid_value", "logit_bias")
    _error(client.post("/v1/completions", json={"prompt": "hi", "logprobs": 2}), 400, "unsupported_parameter")
    _error(client.post("/v1/completions", json={"prompt": ["a", "b"]}), 400, "unsupported_parameter", "prompt")
    _error(client.post("/v1/embeddings", json={"input": "hi"}), 400, "unsupported_endpoint")
    err = _error(client.post("/v1/completions", json={"prompt": "word " * 9000, "stream": True}), 400,
                 "context_length_exceeded")
    assert "8192" in err["message"]
    # the library's own refusal, raised inside generation, is still a 400 (streamed: before the stream starts)
    for stream in (False, True):
        _error(client.post(CHAT, json={"messages": HI, "stream": stream, "tools": [],
                                       "tool_choice": {"type": "function", "function": {"name": "x"}}}), 400)
    # error bodies never echo the request's text
    secret = [{"role": "user", "content": "secret-prompt-8812"}]
    for extra in ({"temperature": "hot"}, {"tools": "not-a-list"}, {"stop": 5}, {"grammar": "root ::= ("},
                  {"tools": [], "tool_choice": {"type": "function", "function": {"name": "x"}}}):
        r = client.post(CHAT, json={"messages": secret, **extra})
        assert r.status_code == 400 and "secret-prompt-8812" not in r.text, r.text
    # found by tests/test_serve_fuzz.py: an empty completion prompt, a null sampling field
    _error(client.post("/v1/completions", json={}), 400, "missing_required_parameter", "prompt")
    assert client.post(CHAT, json={"messages": HI, "max_tokens": 1, "frequency_penalty": None}).status_code == 200
    one = client.post("/v1/completions", json={"prompt": ["Once upon a time"], "max_tokens": 3})
    assert one.status_code == 200 and one.json()["usage"]["completion_tokens"] == 3
    _alive(client)


def _schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}


def test_structured_outputs_are_honoured_and_schema_bombs_refused(server, client):
    """OpenAI's ``json_schema`` response format (the SDK's ``parse``, LangChain's structured output) was
    a 400; a schema whose grammar spells out ``maxLength: 10**9`` froze the server, then exhausted memory."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    out = client.post(CHAT, json={"messages": HI, "temperature": 0, "response_format": _schema_format(schema)}).json()
    assert json.loads(out["choices"][0]["message"]["content"]) in ({"ok": True}, {"ok": False})
    bomb = {"type": "string", "maxLength": 10**9}
    t = time.perf_counter()
    r = client.post(CHAT, json={"messages": HI, "response_format": _schema_format(bomb)})
    assert "too large" in _error(r, 400, "invalid_value", "response_format")["message"]
    assert time.perf_counter() - t < 3
    for fmt, param in ((_schema_format({"type": "bogus"}), "response_format"),
                       ({"type": "json_schema", "json_schema": {"name": "x", "schema": "x"}}, "response_format.json_schema"),
                       ({"type": "json_object", "schema": {"type": "array", "items": {}, "minItems": 10**7}}, "response_format")):
        _error(client.post(CHAT, json={"messages": HI, "response_format": fmt}), 400, "invalid_value", param)
    # a forced tool's parameters become a grammar inside the library: too large is refused first
    tool = {"type": "function", "function": {"name": "f", "parameters": bomb}}
    _error(client.post(CHAT, json={"messages": HI, "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}}),
           400, "invalid_value", "tools[0].function.parameters")
    _error(client.post(CHAT, json={"messages": HI, "functions": [tool["function"]], "function_call": {"name": "f"}}),
           400, "invalid_value", "functions[0].parameters")
    _alive(client)


def test_json_without_content_type_is_accepted(server):
    # what `curl -d` sends: application/x-www-form-urlencoded
    r = httpx.post(f"{server.base_url}{CHAT}", content=json.dumps({"messages": HI, "max_tokens": 2}),
                   headers={**AUTH, "content-type": "application/x-www-form-urlencoded"}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


def test_compressed_bodies_are_inflated_within_the_size_limit(client):
    """gzip / deflate bodies were 400 ``invalid_json``; now inflated, with the size limit on the inflated
    bytes (a 100 MB "zip bomb" of 100 kB stops at the limit)."""
    body = json.dumps({"messages": HI, "max_tokens": 2}).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)), ("identity", body)):
        r = client.post(CHAT, content=data, headers={"content-encoding": encoding})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2, (encoding, r.text)
    bomb = gzip.compress(b" " * 100_000_000)
    assert len(bomb) < 200_000
    _error(client.post(CHAT, content=bomb, headers={"content-encoding": "gzip"}), 413, "request_too_large")
    _error(client.post(CHAT, content=gzip.compress(body)[:-9], headers={"content-encoding": "gzip"}), 400, "invalid_encoding")
    _error(client.post(CHAT, content=body, headers={"content-encoding": "gzip"}), 400, "invalid_encoding")
    _error(client.post(CHAT, content=body, headers={"content-encoding": "br"}), 415, "unsupported_content_encoding")


def test_a_body_that_never_arrives_times_out_without_blocking_others(server, client):
    """A slow-loris client (a Content-Length, then one byte) held its connection open for ever; 20
    of them now get 408 after --read_timeout (2 s here) and a closed connection, while others are served."""
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: 100\r\n\r\n{")
        socks.append(s)
    t = time.perf_counter()
    _alive(client)
    assert time.perf_counter() - t < 1.5
    for s in socks:
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(4096):  # until the server closes
            answer += chunk
        s.close()
        assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert time.perf_counter() - t < 8


def test_headers_that_never_end_or_are_not_http(server, client, request_log):
    """Half a request line, then nothing: uvicorn held the connection for ever (its keep-alive timer stops
    at the first byte). Closed after --read_timeout (2 s here), whether fresh or after a first response."""
    fresh = socket.create_connection(("127.0.0.1", server.port))
    fresh.sendall(b"GET /health HTTP/1.1\r\nHo")
    reused = socket.create_connection(("127.0.0.1", server.port))
    reused.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reused.settimeout(5)
    first = b""
    while not first.endswith(b"}"):  # the whole /health answer
        first += reused.recv(4096)
    assert first.startswith(b"HTTP/1.1 200 ")
    reused.sendall(b"GET /hea")
    t = time.perf_counter()
    for s in (fresh, reused):
        s.settimeout(10)
        assert s.recv(4096) == b""  # closed by the server, no answer
        s.close()
    assert time.perf_counter() - t < 6
    # bytes that are not HTTP (a negative Content-Length, TLS to plain HTTP): uvicorn's plain-text 400 is
    # OpenAI-shaped, and logged (it had no row)
    ids = []
    for raw in (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01" + b"\0" * 40):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.settimeout(10)
            s.sendall(raw)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ") and json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_http"
        rid = re.search(rb"\r\nx-request-id: (req_[0-9a-f]{32})\r\n", answer)
        assert rid, answer
        ids.append(rid[1].decode())
    rows = log_rows(request_log, ids)
    assert [{**row, "time": 0} for row in rows] == [
        {"event": "request", "method": None, "path": None, "status": 400, "ms": None, "request_id": rid,
         "error_code": "invalid_http", "time": 0} for rid in ids]
    _alive(client)


def test_a_broken_chunked_body_gets_one_400_and_one_row(server, client, request_log):
    """Bytes that break HTTP after a request's headers (a bad chunk size line, at once or after a good
    chunk) got the protocol's 400 and its row, and the app's 499 row for the same request: two rows
    for one request. Now one row, for the 400 that was sent, with the request's method, path and id
    (the client's own, else a fresh one, the same in the answer's header)."""
    head = f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n"
    ids = []
    for extra, chunks in (("X-Request-Id: bad-chunk-size\r\n", b"zz\r\n"), ("", b"2\r\n{}\r\nzz\r\n")):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.settimeout(10)
            s.sendall(f"{head}{extra}\r\n".encode() + chunks)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ") and json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_http"
        ids.append(re.search(rb"\r\nx-request-id: ([^\r]+)\r\n", answer)[1].decode())
    assert ids[0] == "bad-chunk-size" and re.fullmatch(r"req_[0-9a-f]{32}", ids[1]), ids
    rows = log_rows(request_log, ids)
    assert [{**row, "ms": 0, "time": 0} for row in rows] == [
        {"event": "request", "method": "POST", "path": CHAT, "status": 400, "ms": 0, "request_id": rid,
         "error_code": "invalid_http", "time": 0} for rid in ids]
    time.sleep(0.5)  # a second row came as the app ended, at once
    written = [json.loads(line)["request_id"] for line in request_log.read_text(encoding="utf-8").splitlines()]
    assert [written.count(rid) for rid in ids] == [1, 1]
    _alive(client)


def test_cors_lets_browsers_send_and_read_the_request_id(client, request_log):
    origin = {"Origin": "http://good.example"}
    pre = client.options(CHAT, headers={**origin, "Access-Control-Request-Method": "POST",
                                        "Access-Control-Request-Headers": "authorization, x-request-id",
                                        "X-Request-Id": "pre-1"})
    assert pre.status_code == 200 and pre.headers["x-request-id"] == "pre-1"
    assert "x-request-id" in pre.headers["access-control-allow-headers"].lower()
    r = client.get("/v1/models", headers=origin)
    assert r.headers["access-control-expose-headers"].lower() == "x-request-id" and r.headers["x-request-id"]
    row, = log_rows(request_log, ["pre-1"])  # preflights had no row
    assert (row["method"], row["path"], row["status"]) == ("OPTIONS", CHAT, 200) and "error_code" not in row
    sdk = "content-type, x-stainless-lang, x-stainless-os, x-stainless-retry-count, openai-organization"
    pre = client.options(CHAT, headers={**origin, "Access-Control-Request-Method": "POST",
                                        "Access-Control-Request-Headers": sdk})  # OpenAI's JS SDK in a browser
    allowed = [h.strip() for h in pre.headers["access-control-allow-headers"].lower().split(",")]
    assert pre.status_code == 200 and set(sdk.split(", ")) <= set(allowed)
    assert len(allowed) == len(set(allowed))  # content-type was listed twice


def test_cors_allows_every_header_the_openai_sdks_send(client):
    """A trial found the preflight of openai-node's ``chat.completions.stream()`` (and openai-python's
    helpers) refused: they send ``X-Stainless-Helper-Method``; ``Idempotency-Key`` was refused too.
    Every ``X-Stainless-*`` name is allowed now, other names stay refused, credentials stay off."""
    origin = {"Origin": "http://good.example", "Access-Control-Request-Method": "POST"}
    for asked in ("content-type, x-stainless-helper-method, idempotency-key, authorization",
                  "X-Stainless-Helper-Method", "x-stainless-helper, x-stainless-poll-helper, x-stainless-stream-helper"):
        pre = client.options(CHAT, headers={**origin, "Access-Control-Request-Headers": asked})
        assert pre.status_code == 200, pre.text
        allowed = [h.strip() for h in pre.headers["access-control-allow-headers"].lower().split(",")]
        assert {h.strip().lower() for h in asked.split(",")} <= set(allowed) and len(allowed) == len(set(allowed))
        assert pre.headers["access-control-allow-origin"] == "http://good.example"
        assert "access-control-allow-credentials" not in pre.headers
    refused = client.options(CHAT, headers={**origin, "Access-Control-Request-Headers": "x-stainless-os, x-other"})
    assert "(headers not allowed)" in _error(refused, 400, "cors_not_allowed")["message"]
    assert "x-stainless-*" in refused.json()["error"]["message"]
    r = client.post(CHAT, json={"messages": HI, "max_tokens": 2}, headers={
        "Origin": "http://good.example", "X-Stainless-Helper-Method": "stream", "Idempotency-Key": "stainless-1"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://good.example"


def test_refused_cors_preflights_are_openai_shaped_and_logged(client, request_log):
    """A preflight from an origin (or with a method) not allowed got starlette's plain-text
    ``400 Disallowed CORS origin``, and no log row."""
    asks = [("refused-origin", {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}),
            ("refused-both", {"Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"})]
    for rid, headers in asks:
        r = client.options(CHAT, headers={**headers, "X-Request-Id": rid})
        err = _error(r, 400, "cors_not_allowed")
        assert err["param"] is None and r.headers["x-request-id"] == rid
        assert "access-control-allow-origin" not in r.headers
    assert "(origin not allowed)" in _error(client.options(CHAT, headers=asks[0][1]), 400)["message"]
    assert "(origin, method not allowed)" in err["message"] and "GET, POST" in err["message"]
    rows = log_rows(request_log, [rid for rid, _ in asks])
    assert [(row["method"], row["status"], row["error_code"]) for row in rows] == [("OPTIONS", 400, "cors_not_allowed")] * 2


def test_model_ids_and_head_requests(server, client):
    """The OpenAI SDK's ``models.retrieve`` got 404 for the served model; ``HEAD`` (``wget --spider``
    health checks) got 405 on GET routes."""
    alias = client.get("/v1/models").json()["data"][0]["id"]
    got = client.get(f"/v1/models/{alias}").json()
    assert got["id"] == alias and got["object"] == "model" and isinstance(got["created"], int)
    for odd in ("x", "%00", "..%2F..%2Fetc%2Fpasswd", "a/b", "a" * 5000, "%ff", alias + "x"):
        _error(client.get(f"/v1/models/{odd}"), 404, "model_not_found", "model")
    for path in ("/health", "/v1/models", f"/v1/models/{alias}"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path
    assert httpx.head(f"{server.base_url}/health").status_code == 200  # no key needed, like GET
    assert httpx.head(f"{server.base_url}/v1/models").status_code == 401
    assert client.head(CHAT).status_code == 405


def test_odd_values_found_by_an_outside_tester(client):
    """Accepted before although wrong: booleans read as numbers, logit_bias keys that ``int()`` takes
    (" 5", "5_0", Arabic-Indic digits), a non-object ``stream_options``, ``typical_p`` out of range;
    a completion ``suffix`` over the context was the library's own error without the code."""
    for name in ("temperature", "top_p", "n", "seed", "max_tokens", "presence_penalty"):
        _error(client.post(CHAT, json={"messages": HI, name: True}), 400, "invalid_type", name)
    for key in (" 5", "5_0", "\u0665", "+5"):
        _error(client.post(CHAT, json={"messages": HI, "logit_bias": {key: 1}}), 400, "invalid_value", "logit_bias")
    _error(client.post(CHAT, json={"messages": HI, "stream": True, "stream_options": "x"}), 400, "invalid_value",
           "stream_options")
    _error(client.post(CHAT, json={"messages": HI, "stream": True, "stream_options": {"include_usage": "yes"}}), 400,
           "invalid_value", "stream_options.include_usage")
    _error(client.post(CHAT, json={"messages": HI, "typical_p": -1}), 400, "invalid_value", "typical_p")
    _error(client.post(CHAT, json={"messages": HI, "repeat_penalty": 0}), 400, "invalid_value", "repeat_penalty")
    # forcing a tool that is not there: the library answered without one, or raised a bare ValueError
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    for extra in ({"tool_choice": "required"}, {"tool_choice": {"type": "function", "function": {"name": "f"}}},
                  {"function_call": {"name": "f"}},
                  {"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "g"}}}):
        _error(client.post(CHAT, json={"messages": HI, **extra}), 400, "invalid_value", next(iter(extra.keys() - {"tools"})))
    history = [*HI, {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]}, *HI]
    assert client.post(CHAT, json={"messages": history, "max_tokens": 1}).status_code == 200  # was a 400
    forced = client.post(CHAT, json={"messages": HI, "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}},
                                     "max_tokens": 20})
    assert forced.status_code == 200 and forced.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "f"
    # "required" with one tool forces it (the library answered with plain text); with several it is refused
    required = client.post(CHAT, json={"messages": HI, "tools": [tool], "tool_choice": "required", "max_tokens": 20})
    assert required.status_code == 200, required.text
    choice = required.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"][0]["function"]["name"] == "f"
    # a forced call cut by max_tokens ends "length", not "tool_calls" (its arguments are not complete JSON)
    cut = {"messages": HI, "tools": [tool], "tool_choice": "required", "max_tokens": 2}
    assert client.post(CHAT, json=cut).json()["choices"][0]["finish_reason"] == "length"
    chunks = [json.loads(line[6:]) for line in client.post(CHAT, json={**cut, "stream": True}).text.splitlines()
              if line.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["length"]
    g = {"type": "function", "function": {**tool["function"], "name": "g"}}
    _error(client.post(CHAT, json={"messages": HI, "tools": [tool, g], "tool_choice": "required"}), 400,
           "unsupported_value", "tool_choice")
    err = _error(client.post("/v1/completions", json={"prompt": "hi", "suffix": "word " * 9000}), 400,
                 "context_length_exceeded", "prompt")
    assert "your prompt resulted in" in err["message"] and "completion" not in err["message"].split(".")[1][:40]
    ok = client.post(CHAT, json={"messages": HI, "max_tokens": 1, "logit_bias": {"5": -100}, "seed": 2**70,
                                 "stream": True, "stream_options": {"include_usage": False}})
    assert ok.status_code == 200, ok.text


def test_request_shapes_openai_refuses_get_400s_with_codes(client, request_log):
    """Found by a trial: message-shape 400s had ``"code": null`` (and so had their log rows), and
    shapes OpenAI refuses were accepted: ``"stream": "true"``, ``stream_options`` without
    ``stream: true``, a tool message without ``tool_call_id``, a user message without ``content``."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    cases = [  # (request id, body, code, param)
        ("m-empty", {"messages": []}, "empty_array", "messages"),
        ("m-type", {"messages": "hi"}, "invalid_type", "messages"),
        ("m-item", {"messages": ["hi"]}, "invalid_type", "messages[0]"),
        ("m-role", {"messages": [{"role": "bot", "content": "x"}]}, "invalid_value", "messages[0].role"),
        ("m-content", {"messages": [{"role": "user", "content": {"text": "x"}}]}, "invalid_type", "messages[0].content"),
        ("m-part", {"messages": [{"role": "user", "content": [{"type": "x"}]}]}, "invalid_value",
         "messages[0].content[0]"),
        ("m-no-content", {"messages": [{"role": "user"}]}, "missing_required_parameter", "messages[0].content"),
        ("m-no-call-id", {"messages": [*HI, {"role": "assistant", "content": None, "tool_calls": [call]},
                                       {"role": "tool", "content": "1"}]},
         "missing_required_parameter", "messages[2].tool_call_id"),
        ("s-string", {"messages": HI, "stream": "true"}, "invalid_type", "stream"),
        ("s-options", {"messages": HI, "stream_options": {"include_usage": True}}, "invalid_value", "stream_options"),
        ("s-options-false", {"messages": HI, "stream": False, "stream_options": {"include_usage": True}},
         "invalid_value", "stream_options"),
    ]
    for rid, body, code, param in cases:
        _error(client.post(CHAT, json=body, headers={"X-Request-Id": rid}), 400, code, param)
    rows = log_rows(request_log, [rid for rid, *_ in cases])
    assert [row["error_code"] for row in rows] == [code for _, _, code, _ in cases]
    string = client.post(CHAT, json={"messages": HI, "stream": "true"}).json()["error"]["message"]
    assert string == "Invalid type for 'stream': expected a boolean, but got a string instead."
    # what OpenAI accepts still is: an assistant turn with tool calls and no content, a null content,
    # a tool answer with its call's id, stream_options with stream true
    history = [*HI, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1", "content": "1"},
               {"role": "user", "content": None}]
    assert client.post(CHAT, json={"messages": history, "max_tokens": 1}).status_code == 200
    with client.stream("POST", CHAT, json={"messages": HI, "max_tokens": 1, "stream": True,
                                           "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and '"usage"' in r.read().decode()


def test_trailing_slashes_are_served_without_redirects(client):
    """``POST /v1/chat/completions/`` was a 307 to an ``http://`` URL built from the Host header (wrong
    behind a TLS proxy), ``GET /v1/models/`` a 404: each path is served as without its slash."""
    r = client.post(CHAT + "/", json={"messages": HI, "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    listed = client.get("/v1/models/")
    assert listed.status_code == 200 and listed.json()["object"] == "list"
    alias = listed.json()["data"][0]["id"]
    assert client.get(f"/v1/models/{alias}/").json()["id"] == alias
    assert httpx.get(f"{client.base_url}/health/").json()["status"] == "ok"  # open, like /health
    _error(client.get("/v1/nothing/"), 404, "unknown_url")
    assert not any(300 <= client.request(m, p).status_code < 400 for m, p in [("GET", "/v1/"), ("GET", "/v1/chat/")])


def test_min_tokens_keeps_logit_bias_and_an_empty_prompt_is_completed(client):
    """With ``min_tokens``, the library dropped ``logit_bias`` (and ``min_tokens`` with it): a reply
    pushed to its end-of-turn token ran to ``max_tokens``; now it takes ``min_tokens`` tokens, then
    ends. ``/v1/completions`` with ``prompt: ""`` was a 400; OpenAI completes it."""
    end = client.post(CHAT, json={"messages": HI, "min_tokens": 5, "logit_bias": {"2": 100}, "max_tokens": 8}).json()
    assert (end["usage"]["completion_tokens"], end["choices"][0]["finish_reason"]) == (5, "stop"), end
    banned = client.post(CHAT, json={"messages": HI, "min_tokens": 2, "logit_bias": {"2": -100, "0": -100},
                                     "max_tokens": 6}).json()
    assert (banned["usage"]["completion_tokens"], banned["choices"][0]["finish_reason"]) == (6, "length")
    r = client.post("/v1/completions", json={"prompt": "", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 1, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1 and r.json()["choices"][0]["text"]


def test_a_seed_repeats_its_reply_whatever_came_before(client):
    # the same prompt twice in a row reused the cached prompt, and the same seed sampled another reply
    story = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 12, "temperature": 1.0,
             "seed": 5}

    def text(stream=False):
        r = client.post(CHAT, json={**story, "stream": stream})
        if not stream:
            return r.json()["choices"][0]["message"]["content"]
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

    client.post(CHAT, json={"messages": HI, "max_tokens": 1})
    first = text()
    assert [text(), text(stream=True), text()] == [first] * 3


def test_completion_stream_sends_usage_when_asked(client):
    # /v1/completions ignored stream_options.include_usage (the library's chat and completion alike)
    body = {"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
    plain = client.post("/v1/completions", json=body).json()
    r = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert r.text.rstrip().endswith("data: [DONE]")
    last = chunks[-1]
    assert last["choices"] == [] and last["object"] == "text_completion" and last["id"] == chunks[0]["id"]
    assert last["usage"] == plain["usage"] == {"prompt_tokens": plain["usage"]["prompt_tokens"], "completion_tokens": 5,
                                               "total_tokens": plain["usage"]["prompt_tokens"] + 5}
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == plain["choices"][0]["text"]
    r = client.post("/v1/completions", json={**body, "stream": True})
    assert all(not c.get("usage") for c in (json.loads(line[6:]) for line in r.text.splitlines()
                                            if line.startswith("data: {")))


def test_absurd_stop_lists_are_refused_naming_the_limit(client):
    """More than OpenAI's 4 stop strings are accepted (as llama.cpp's server and vLLM do), up to 16 of
    up to 1024 characters; 10,000 of them made every token slower, so beyond the limits it is a 400."""
    many = ["zq%d" % i for i in range(10_000)]
    for path, base in ((CHAT, {"messages": HI}), ("/v1/completions", {"prompt": "Hello"})):
        for stream in (False, True):
            err = _error(client.post(path, json={**base, "stop": many, "stream": stream}), 400,
                         "array_above_max_length", "stop")
            assert "maximum length 16" in err["message"] and "length 10000" in err["message"]
    err = _error(client.post(CHAT, json={"messages": HI, "stop": "q" * 1_000_000}), 400, "string_above_max_length", "stop")
    assert "maximum length 1024" in err["message"] and "length 1000000" in err["message"]
    _error(client.post(CHAT, json={"messages": HI, "stop": ["a", "b", "q" * 1025]}), 400, "string_above_max_length",
           "stop[2]")
    at_limit = ["\u00e9" * 1024] * 15 + ["e"]  # 16 strings of up to 1024 characters (2048 UTF-8 bytes) are fine
    for stream in (False, True):
        r = client.post(CHAT, json={"messages": HI, "stop": at_limit, "max_tokens": 20, "temperature": 0, "stream": stream})
        assert r.status_code == 200, r.text
    out = client.post(CHAT, json={"messages": HI, "stop": at_limit, "max_tokens": 20, "temperature": 0}).json()
    assert out["choices"][0]["finish_reason"] == "stop" and "e" not in out["choices"][0]["message"]["content"]
    _alive(client)


def test_empty_stop_strings_are_ignored(client):
    # "" is in every text: the library cut every reply to nothing at once
    for stop in ("", [""], ["", "\n\n\n"]):
        for stream in (False, True):
            r = client.post(CHAT, json={"messages": HI, "stop": stop, "max_tokens": 4, "temperature": 0,
                                        "stream": stream, "stream_options": {"include_usage": True} if stream else None})
            assert r.status_code == 200, r.text
            usage = (r.json() if not stream else json.loads(r.text.split("data: ")[-2]))["usage"]
            assert usage["completion_tokens"] == 4, (stop, stream, usage)


def test_limits_clients_send_are_honoured(client):
    for name in ("max_tokens", "max_completion_tokens"):
        for bad in (0, -1):
            _error(client.post(CHAT, json={"messages": HI, name: bad}), 400, "invalid_value", name)
    out = client.post(CHAT, json={"messages": [{"role": "user", "content": "Count from 1 to 100."}],
                                  "max_completion_tokens": 3, "temperature": 0}).json()
    assert out["usage"]["completion_tokens"] == 3 and out["choices"][0]["finish_reason"] == "length"
    # no limit sent: the server cap (--max_tokens_cap 24); a larger one is capped too
    for extra in ({}, {"max_tokens": 5000}):
        out = client.post(CHAT, json={"messages": [{"role": "user", "content": "Write a very long story."}],
                                      "temperature": 0, "repeat_penalty": 1.0, **extra}).json()
        assert out["usage"]["completion_tokens"] <= 24
    for value in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0.5", b"2.5"):
        body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + value + b"}"
        _error(client.post(CHAT, content=body), 400)
    _error(client.post(CHAT, json={"messages": HI, "n": 2}), 400, "unsupported_parameter", "n")
    _error(client.post(CHAT, json={"messages": HI, "top_k": 2**40}), 400, "invalid_value", "top_k")
    assert client.post(CHAT, json={"messages": HI, "seed": 2**80, "max_tokens": 1}).status_code == 200


def test_body_size_and_message_count_caps(client):
    _error(client.post(CHAT, json={"messages": [{"role": "user", "content": "x" * 2_000_000}]}), 413, "request_too_large")
    many = [{"role": "user", "content": ""}] * 9000
    _error(client.post(CHAT, json={"messages": many}), 400, "context_length_exceeded")


def _health_latencies(server, busy: threading.Thread) -> list[float]:
    """Seconds each ``GET /health`` took while ``busy`` (started here) runs, sorted."""
    out = []
    busy.start()
    with httpx.Client(base_url=server.base_url, timeout=5) as health:
        while busy.is_alive():
            t = time.perf_counter()
            assert health.get("/health").status_code == 200
            out.append(time.perf_counter() - t)
    return sorted(out)


def _p95(values: list[float]) -> float:
    return values[int(0.95 * (len(values) - 1))]


def test_health_stays_fast_while_a_10mb_body_is_refused(server, client):
    """The body comes in chunks without a Content-Length, so the server must read and count it. The
    library's server froze /health for 17 s on a 10 MB chat body. Asserted: p95 < 100 ms and no
    stall over 1 s (single samples reach ~110 ms on this shared 2-core machine at load average 12,
    scheduling noise that an idle /health sees too)."""
    status = {}

    def slow_body():
        for _ in range(160):
            yield b"x" * 65536
            time.sleep(0.005)

    def big():
        try:
            status["code"] = httpx.post(f"{server.base_url}{CHAT}", content=slow_body(), headers=AUTH, timeout=60).status_code
        except httpx.TransportError:  # the server may close before the client finished sending
            status["code"] = "closed"

    lat = _health_latencies(server, threading.Thread(target=big, daemon=True))
    print(f"/health while refusing 10 MB: p95 {_p95(lat) * 1000:.1f} ms, worst {lat[-1] * 1000:.1f} ms, {len(lat)} requests")
    assert status["code"] in (413, "closed")
    assert _p95(lat) < 0.1 and lat[-1] < 1.0


def test_health_stays_fast_while_a_prompt_is_counted(server, client):
    """8000 messages (just under n_ctx) are rendered and tokenized off the event loop (the library's
    server froze /health for 32 s on 40k messages)."""
    body = json.dumps({"messages": [{"role": "user", "content": "hello there"}] * 8000}).encode()
    result = {}
    lat = _health_latencies(server, threading.Thread(target=lambda: result.update(r=client.post(CHAT, content=body)),
                                                     daemon=True))
    print(f"/health while counting 8000 messages: p95 {_p95(lat) * 1000:.1f} ms, worst {lat[-1] * 1000:.1f} ms")
    _error(result["r"], 400, "context_length_exceeded")
    assert _p95(lat) < 0.1 and lat[-1] < 1.0


def test_request_timeout_and_sigterm_stop_a_running_generation(smollm2_gguf):
    long = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 4000, "temperature": 0,
            "repeat_penalty": 1.0}
    with start_server(smollm2_gguf, extra_args=("--request_timeout", "8", "--max_tokens_cap", "4000",
                                                "--shutdown_timeout", "0.5")) as srv:
        t = time.perf_counter()
        out = httpx.post(f"{srv.base_url}{CHAT}", json=long, timeout=60).json()
        assert 7.5 < time.perf_counter() - t < 14
        assert out["choices"][0]["finish_reason"] == "length" and 0 < out["usage"]["completion_tokens"] < 4000
        # the text so far, not "" (the library drops it when generation is stopped from outside)
        text = out["choices"][0]["message"]["content"]
        count = httpx.post(f"{srv.base_url}/extras/tokenize/count", json={"input": text}).json()["count"]
        assert abs(count - 1 - out["usage"]["completion_tokens"]) <= 3, (count, out["usage"])
        _disconnected_clients_stop_their_generation(srv, long)
        # SIGTERM while a non-streamed generation runs: the process ends by the signal within
        # --shutdown_timeout (+ the 2 s deadline), before the 8 s request limit would end the generation
        threading.Thread(target=lambda: _swallow(lambda: httpx.post(f"{srv.base_url}{CHAT}", json=long, timeout=60)),
                         daemon=True).start()
        # and two bodies still arriving: uvicorn cancels them at its deadline (a 500 with a traceback before)
        slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
        for sock in slow:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.5)
        t = time.perf_counter()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(10)
        took = time.perf_counter() - t
        print(f"SIGTERM to exit: {took:.2f} s, status {code}")
        assert code in (0, -signal.SIGTERM) and took < 2.5
        assert "Traceback" not in srv.output() and " 500 " not in srv.output()
        for sock in slow:
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 503 ")
            sock.close()


def _disconnected_clients_stop_their_generation(srv, long):
    """A client that leaves (non-streamed: gives up waiting; streamed: closes after the first token)
    frees the model at once: the next one-token request does not wait out the rest of the 8 s generation
    (at least 7 s; the bound leaves room for a loaded machine)."""
    one = {"messages": HI, "max_tokens": 1}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{srv.base_url}{CHAT}", json=long, timeout=0.3)
    t = time.perf_counter()
    assert httpx.post(f"{srv.base_url}{CHAT}", json=one, timeout=60).status_code == 200
    after_timeout = time.perf_counter() - t
    with httpx.stream("POST", f"{srv.base_url}{CHAT}", json={**long, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if '"content"' in line:
                break
    t = time.perf_counter()
    assert httpx.post(f"{srv.base_url}{CHAT}", json=one, timeout=60).status_code == 200
    after_stream = time.perf_counter() - t
    print(f"next request after a client left: {after_timeout:.2f} s (non-streamed), {after_stream:.2f} s (stream)")
    assert after_timeout < 4 and after_stream < 4


def _swallow(fn):
    try:
        fn()
    except httpx.TransportError:
        pass


def test_a_streamed_completion_with_echo_starts_with_the_prompt(client):
    # the stream left the prompt out while the non-streamed answer had it
    body = {"prompt": "Hades is", "max_tokens": 3, "temperature": 0, "echo": True}
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    r = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert texts[0] == "Hades is" and "".join(texts) == plain and plain.startswith("Hades is") and len(plain) > 8
    assert len({c["id"] for c in chunks}) == 1 and chunks[-1]["usage"]["completion_tokens"] == 3


def test_union_fields_name_the_field_and_what_it_takes(client):
    # pydantic's branch names leaked: param "tool_choice.literal['none','auto','required']", "stop.str",
    # "prompt.str", and messages ending "(and 1 more problem)"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    takes = "'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}"
    cases = [  # (path, extra fields, code, param, message)
        (CHAT, {"tool_choice": "REQUIRED"}, "invalid_value", "tool_choice",
         f"Invalid value for 'tool_choice': expected {takes}."),
        (CHAT, {"tool_choice": 5}, "invalid_type", "tool_choice",
         f"Invalid type for 'tool_choice': expected {takes}, but got an integer instead."),
        (CHAT, {"tools": [tool], "tool_choice": {"type": "function"}}, "missing_required_parameter",
         "tool_choice.function",
         f"Missing required parameter: 'tool_choice.function' ('tool_choice' takes {takes})."),
        (CHAT, {"tools": [tool], "tool_choice": {"type": "function", "function": {}}}, "missing_required_parameter",
         "tool_choice.function.name",
         f"Missing required parameter: 'tool_choice.function.name' ('tool_choice' takes {takes})."),
        (CHAT, {"stop": 5}, "invalid_type", "stop",
         "Invalid type for 'stop': expected a string or an array of strings, but got an integer instead."),
        (CHAT, {"stop": ["a", None]}, "invalid_type", "stop[1]",
         "Invalid type for 'stop[1]': expected a string, but got null instead "
         "('stop' takes a string or an array of strings)."),
        ("/v1/completions", {"prompt": 5}, "invalid_type", "prompt",
         "Invalid type for 'prompt': expected a string or an array of one string, but got an integer instead."),
        (CHAT, {"tools": [{"type": "code_interpreter"}]}, "invalid_value", "tools[0].type",
         "Invalid value for 'tools[0].type': expected 'function'."),
    ]
    for path, extra, code, param, message in cases:
        body = {"messages": HI, **extra} if path == CHAT else extra
        assert _error(client.post(path, json=body), 400, code, param)["message"] == message


def test_numbers_and_booleans_sent_as_strings_are_refused_as_openai_does(client):
    # "0.5" was read as 0.5 for temperature, top_p, presence_penalty and seed (answered 200), while
    # max_tokens "8" was refused; "n": "1" got "'n' must be 1"; "logprobs": "false" was read as true
    for name, value, expected in (("temperature", "0.5", "a number"), ("top_p", "0.5", "a number"),
                                  ("presence_penalty", "1", "a number"), ("seed", "5", "an integer"),
                                  ("n", "1", "an integer"), ("max_tokens", "8", "an integer"),
                                  ("top_k", 4.5, "an integer"), ("logprobs", "false", "a boolean")):
        err = _error(client.post(CHAT, json={"messages": HI, name: value}), 400, "invalid_type", name)
        got = "a string" if isinstance(value, str) else "a decimal"
        assert err["message"] == f"Invalid type for '{name}': expected {expected}, but got {got} instead."
    for name, value in (("echo", "true"), ("logprobs", "2"), ("temperature", [0.5])):
        _error(client.post("/v1/completions", json={"prompt": "hi", name: value}), 400, "invalid_type", name)
    ok = client.post(CHAT, json={"messages": HI, "max_tokens": 1, "temperature": 1, "top_p": 0.5, "seed": 5,
                                 "n": 1, "logprobs": False, "top_k": 40})
    assert ok.status_code == 200, ok.text


def test_whole_decimals_in_integer_fields_are_those_integers(client):
    # strict types refused "max_tokens": 512.0 (computed or configured counts), which the library's request
    # models and JSON Schema read as 512; 4.5 stays refused
    body = {"messages": HI, "temperature": 1}
    want = client.post(CHAT, json={**body, "max_tokens": 3, "seed": 7, "n": 1, "top_k": 40}).json()
    got = client.post(CHAT, json={**body, "max_tokens": 3.0, "seed": 7.0, "n": 1.0, "top_k": 40.0})
    assert got.status_code == 200, got.text
    assert got.json()["choices"][0]["message"] == want["choices"][0]["message"]
    assert got.json()["usage"]["completion_tokens"] <= 3
    assert client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2e0}).status_code == 200
    err = _error(client.post(CHAT, json={**body, "max_tokens": 4.5}), 400, "invalid_type", "max_tokens")
    assert err["message"] == "Invalid type for 'max_tokens': expected an integer, but got a decimal instead."


def test_a_tool_message_whose_tool_call_id_is_no_string_is_refused(client):
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    for value, kind in ((None, "null"), (5, "an integer")):
        msgs = [*HI, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": value, "content": "42"}]
        err = _error(client.post(CHAT, json={"messages": msgs}), 400, "invalid_type", "messages[2].tool_call_id")
        assert err["message"] == f"Invalid type for 'messages[2].tool_call_id': expected a string, but got {kind} instead."


def test_a_tool_message_answering_no_call_id_of_the_assistant_is_refused(client):
    """Trial 33 F8: `tool_call_id: "zzz"` after a call `c1` was answered 200; OpenAI answers 400."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    msgs = [*HI, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "zzz", "content": "42"}]
    err = _error(client.post(CHAT, json={"messages": msgs}), 400, "invalid_value", "messages[2].tool_call_id")
    assert err["message"] == "Invalid parameter: 'tool_call_id' of 'zzz' not found in 'tool_calls' of previous message."
    assert client.get("/health").status_code == 200


def test_top_k_minus_one_means_disabled_and_range_errors_print_integers(client):
    # -1 (vLLM's "disabled", sent by some client configs) was refused as "between 0 and 2.14748e+09"
    body = {"messages": [{"role": "user", "content": "Name a game."}], "max_tokens": 6, "temperature": 1, "seed": 3}
    disabled = client.post(CHAT, json={**body, "top_k": -1})
    assert disabled.status_code == 200, disabled.text
    off = client.post(CHAT, json={**body, "top_k": 0}).json()
    assert disabled.json()["choices"][0]["message"] == off["choices"][0]["message"]
    for bad in (-2, 2**31):
        err = _error(client.post(CHAT, json={**body, "top_k": bad}), 400, "invalid_value", "top_k")
        assert err["message"] == "'top_k' must be between -1 and 2147483647"
    assert _error(client.post(CHAT, json={**body, "temperature": 3}), 400, "invalid_value")["message"] == \
        "'temperature' must be between 0 and 2"


def test_a_prompt_that_fills_the_context_is_refused_without_counting_a_completion(client):
    # the message counted max_tokens "in the completion", as if prompt + max_tokens were checked
    err = _error(client.post(CHAT, json={"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 24}),
                 400, "context_length_exceeded", "messages")
    assert re.fullmatch(r"This model's maximum context length is 8192 tokens\. However, your messages resulted in "
                        r"\d+ tokens, which leaves no room for a completion\. "
                        r"Please reduce the length of the messages\.",
                        err["message"]), err


def test_a_system_message_anywhere_replaces_the_persona(client):
    # [user, system] got the persona inserted in front: two system turns
    def count(messages):
        return client.post("/extras/tokenize/chat", json={"messages": messages}).json()["count"]

    late = [{"role": "user", "content": "x"}, {"role": "system", "content": "Be a pirate."}]
    with_persona = count([{"role": "system", "content": PERSONA}, *late])
    assert count(late) == count([{"role": "system", "content": ""}, *late]) < with_persona - 10  # nor the template's
    assert count(late) == count([late[0], {"role": "developer", "content": "Be a pirate."}])
    assert count([late[0]]) == count([{"role": "system", "content": PERSONA}, late[0]])  # none: the persona
    r = client.post(CHAT, json={"messages": late, "max_tokens": 1})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == count(late)


def test_small_openai_differences_a_trial_found(server, client):
    # accepted before: top_logprobs without logprobs, an empty content-parts list; a missing key was
    # "Incorrect API key provided"; unknown paths had code "not_found" (OpenAI: "unknown_url")
    _error(client.post(CHAT, json={"messages": HI, "top_logprobs": 2}), 400, "invalid_value", "top_logprobs")
    err = _error(client.post(CHAT, json={"messages": [{"role": "user", "content": []}]}), 400, "empty_array",
                 "messages[0].content")
    assert err["message"] == ("Invalid 'messages[0].content': empty array. Expected an array with minimum length 1, "
                              "but got an empty array instead.")
    for headers, said in (({}, "You didn't provide an API key"), ({"Authorization": "Bearer"}, "You didn't provide "
                          "an API key"), ({"Authorization": f"Basic {KEY}"}, "The Authorization header must read "
                          "'Bearer KEY'"), ({"Authorization": KEY}, "The Authorization header must read 'Bearer KEY'")):
        r = httpx.post(f"{server.base_url}{CHAT}", json={"messages": HI}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["message"] == f"{said}; send it as 'Authorization: Bearer KEY'", headers
    wrong = httpx.post(f"{server.base_url}{CHAT}", json={"messages": HI}, headers={"Authorization": "Bearer nope"})
    assert wrong.json()["error"]["message"].startswith("Incorrect API key provided")
    _error(client.post("/v1/responses", json={"input": "hi"}), 404, "unknown_url")
    ok = client.post(CHAT, json={"messages": HI, "top_logprobs": 0, "max_tokens": 1})
    assert ok.status_code == 200, ok.text


def test_assistant_tool_calls_that_are_not_calls_get_400(client):
    # "tool_calls": "oops" and items that are no calls were silently dropped by the template
    def sent(calls):
        return client.post(CHAT, json={"messages": [*HI, {"role": "assistant", "content": None, "tool_calls": calls},
                                                    {"role": "user", "content": "ok"}], "max_tokens": 1})

    err = _error(sent("oops"), 400, "invalid_type", "messages[1].tool_calls")
    assert err["message"] == "Invalid type for 'messages[1].tool_calls': expected an array of objects, but got a string instead."
    _error(sent([7]), 400, "invalid_type", "messages[1].tool_calls[0]")
    _error(sent([{"id": "c", "type": "function", "function": {"arguments": "{}"}}]), 400, "missing_required_parameter",
           "messages[1].tool_calls[0].function.name")
    _error(sent([{"id": "c", "type": "function"}]), 400, "missing_required_parameter", "messages[1].tool_calls[0].function")
    ok = sent([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 1, ok.text


def test_a_body_in_a_declared_charset_other_than_utf_is_told_to_send_utf8(client):
    body = '{"messages": [{"role": "user", "content": "café"}], "max_tokens": 1}'
    for charset in ("latin-1", '"ISO-8859-1"', "x-nonesuch"):
        r = client.post(CHAT, content=body.encode("latin-1"),
                        headers={"Content-Type": f"application/json; charset={charset}"})
        err = _error(r, 400, "invalid_json")
        assert err["message"].startswith("The request body is not valid JSON ('utf-8' codec can't decode byte 0xe9")
        assert err["message"].endswith(f"; send it in UTF-8 (charset={charset.strip(chr(34)).lower()} is not supported)")
    undeclared = _error(client.post(CHAT, content=body.encode("latin-1")), 400, "invalid_json")
    assert undeclared["message"].endswith("; send a JSON object in UTF-8")
    for charset, codec in (("utf-16", "utf-16"), ("latin-1", "utf-8")):  # UTF-16 read; a UTF-8 body is read whatever it declares
        r = client.post(CHAT, content=body.encode(codec), headers={"Content-Type": f"application/json; charset={charset}"})
        assert r.status_code == 200, r.text


def test_a_key_in_the_url_is_refused_and_never_logged(client, request_log):
    r = client.get("/v1/models", params={"api_key": "url-secret-93"})
    err = _error(r, 401, "invalid_api_key")
    assert err["message"] == ("API keys are never taken from the query string (URLs end up in logs and browser "
                              "history); send it as 'Authorization: Bearer KEY'")
    row, = log_rows(request_log, [r.headers["x-request-id"]])
    assert row["status"] == 401 and "url-secret-93" not in request_log.read_text(encoding="utf-8")


def test_any_model_name_is_served_but_a_model_that_is_no_string_is_refused(client):
    alias = client.get("/v1/models").json()["data"][0]["id"]
    for path, body in ((CHAT, {"messages": HI}), ("/v1/completions", {"prompt": "Hi"})):
        for model in ("gpt-4o", "", alias):
            r = client.post(path, json={**body, "model": model, "max_tokens": 1})
            assert r.status_code == 200 and r.json()["model"] == alias, r.text
        for model, kind in ((5, "an integer"), (["gpt-4o"], "an array"), ({"id": "x"}, "an object"), (None, "null")):
            err = _error(client.post(path, json={**body, "model": model}), 400, "invalid_type", "model")
            assert err["message"] == f"Invalid type for 'model': expected a string, but got {kind} instead."
    _error(client.get("/v1/models/gpt-4o"), 404, "model_not_found", "model")


def test_with_a_key_foreign_origins_and_host_names_are_served(client):
    """The keyless server's guard against web pages (:mod:`steam_persona.serve.local_guard`) is off: a page cannot know the key."""
    r = client.post(CHAT, json={"messages": HI, "max_tokens": 2},
                    headers={"Origin": "https://evil.example", "Host": "proxy.example"})
    assert r.status_code == 200, r.text


def test_message_names_and_unknown_message_keys(server, client):
    err = _error(client.post(CHAT, json={"messages": [{**HI[0], "name": 5}]}), 400, "invalid_type", "messages[0].name")
    assert err["message"] == "Invalid type for 'messages[0].name': expected a string, but got an integer instead."
    for message in ({**HI[0], "foo": 1}, {**HI[0], "name": "bob"}, {"role": "system", "content": "x", "name": "s"}):
        r = client.post(CHAT, json={"messages": [message, *HI], "max_tokens": 2})
        assert r.status_code == 200, r.text
    assert "UserWarning" not in server.output() and "PydanticSerialization" not in server.output()


def test_tool_lists_and_names_openai_refuses(client):
    tool = {"type": "function", "function": {"name": "get_price", "parameters": {"type": "object", "properties": {}}}}
    _error(client.post(CHAT, json={"messages": HI, "tools": []}), 400, "empty_array", "tools")
    for name in ("a b/c", "a" * 65, ""):
        bad = {**tool, "function": {**tool["function"], "name": name}}
        _error(client.post(CHAT, json={"messages": HI, "tools": [tool, bad], "tool_choice": "required"}), 400,
               "invalid_value", "tools[1].function.name")
    _error(client.post(CHAT, json={"messages": HI, "functions": [{"name": "x y"}]}), 400, "invalid_value",
           "functions[0].name")


def test_tool_call_ids_are_short_and_random(client):
    tool = {"type": "function", "function": {"name": "get_price", "parameters": {
        "type": "object", "properties": {"game": {"type": "string"}}, "required": ["game"]}}}
    body = {"messages": HI, "tools": [tool], "tool_choice": "required", "max_tokens": 24, "seed": 1}
    ids = []
    for _ in range(2):
        r = client.post(CHAT, json=body)
        assert r.status_code == 200, r.text
        ids += [c["id"] for c in r.json()["choices"][0]["message"]["tool_calls"]]
    with client.stream("POST", CHAT, json={**body, "stream": True}) as r:
        deltas = [json.loads(line[6:])["choices"] for line in r.iter_lines() if line.startswith("data: {")]
    ids += [c["id"] for d in deltas if d for c in d[0]["delta"].get("tool_calls", []) if "id" in c]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids), ids


def test_405_names_the_path_and_the_methods_it_takes(client):
    r = client.get(CHAT)
    err = _error(r, 405, "method_not_allowed")
    assert err["message"] == "/v1/chat/completions takes POST only; you sent GET", err
    assert r.headers["allow"] == "OPTIONS, POST"  # a plain OPTIONS is answered (204) on every served path
    r = client.post("/health")
    assert r.status_code == 405 and r.json()["error"]["message"] == "/health takes GET or HEAD only; you sent POST"
    assert r.headers["allow"] == "GET, HEAD, OPTIONS"


def test_a_plain_options_gets_204_with_the_paths_methods(server, request_log):
    """Not a CORS preflight (no Origin): 204 with ``Allow``, as most HTTP servers answer, not 405; no key
    needed (a preflight carries none either); an unknown path stays an OpenAI-shaped 404."""
    for path, allow in ((CHAT, "OPTIONS, POST"), ("/v1/models", "GET, HEAD, OPTIONS"),
                        ("/v1/models/anything", "GET, HEAD, OPTIONS"), ("/health", "GET, HEAD, OPTIONS"),
                        ("/v1/chat/completions/", "OPTIONS, POST")):
        r = httpx.options(f"{server.base_url}{path}", headers={"X-Request-Id": f"opt-{path}"})
        assert r.status_code == 204 and r.headers["allow"] == allow and r.content == b"", (path, r.status_code, r.text)
    (row,) = log_rows(request_log, [f"opt-{CHAT}"])
    assert (row["method"], row["status"]) == ("OPTIONS", 204)
    r = httpx.options(f"{server.base_url}/v1/responses")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", r.text


def test_an_allowed_origin_may_ask_for_private_network_access(client):
    r = client.options(CHAT, headers={"Origin": "http://good.example", "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Private-Network": "true"})
    assert r.status_code == 200 and r.headers["access-control-allow-private-network"] == "true", r.text
    r = client.options(CHAT, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Private-Network": "true"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_the_log_counts_a_suffix_prompt_as_usage_does(client, request_log):
    usage = {}
    for rid, body in (("fim-1", {"prompt": "hi", "suffix": "end"}),
                      ("fim-2", {"prompt": "def f(x):", "suffix": "    return y"})):
        r = client.post("/v1/completions", json={**body, "max_tokens": 2}, headers={"X-Request-Id": rid})
        assert r.status_code == 200, r.text
        usage[rid] = r.json()["usage"]["prompt_tokens"]
    rows = log_rows(request_log, list(usage))
    assert [row["prompt_tokens"] for row in rows] == list(usage.values()), (rows, usage)


def test_an_http2_preface_gets_one_505_and_the_connection_closed(server):
    assert_one_505_for_http2(server.base_url)


def test_an_absolute_form_target_is_routed_by_its_path(server):
    """RFC 9112 §3.2.2: a server MUST accept ``GET http://host:port/path`` (a 404 ``unknown_url`` before)."""
    authority = server.base_url.removeprefix("http://")
    got = send_raw(server.base_url, f"GET http://{authority}/v1/models HTTP/1.1\r\nHost: {authority}\r\n"
                                    f"Authorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode())
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), got
    assert [m["id"] for m in json.loads(body)["data"]] == ["SmolLM2-135M-Instruct.Q4_1"]

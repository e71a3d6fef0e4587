"""A real `steam-train serve` process without an API key (the default: loopback only) against web
pages and odd flags, as trial 22 found them: cross-site and DNS-rebinding requests, ports outside
0–65535 and port 0, non-finite timeouts, CORS origins that are no origins, a second Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.serving import assert_one_505_for_http2, REPO, log_rows, send_raw, start_server

CHAT = "/v1/chat/completions"
HI = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}


@pytest.fixture(scope="module")
def request_log(tmp_path_factory):
    return tmp_path_factory.mktemp("local") / "requests.jsonl"


@pytest.fixture(scope="module")
def server(smollm2_gguf, request_log):
    with start_server(smollm2_gguf, extra_args=("--cors_origins", "http://Good.example/",
                                                "--log_file", request_log)) as srv:
        yield srv


def _refused(r, code):
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and "--api_key" in err["message"], err
    return err


def test_a_foreign_page_cannot_make_a_keyless_server_generate(server, request_log):
    # what fetch(url, {method: "POST", mode: "no-cors", body}) sends from any site: no preflight
    r = httpx.post(f"{server.base_url}{CHAT}", content=json.dumps(HI), timeout=30, headers={
        "Origin": "https://evil.example", "Content-Type": "text/plain;charset=UTF-8", "X-Request-Id": "evil-post"})
    _refused(r, "cors_not_allowed")
    (row,) = log_rows(request_log, ["evil-post"])
    assert row["status"] == 403 and row["error_code"] == "cors_not_allowed" and "prompt_tokens" not in row
    for origin in ("null", f"http://127.0.0.1:{server.port + 1}", f"https://localhost:{server.port}"):
        _refused(httpx.get(f"{server.base_url}/v1/models", headers={"Origin": origin}), "cors_not_allowed")


def test_allowed_and_own_origins_and_plain_clients_are_served(server):
    for origin in ("http://good.example", f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}"):
        r = httpx.post(f"{server.base_url}{CHAT}", json=HI, headers={"Origin": origin}, timeout=30)
        assert r.status_code == 200, (origin, r.text)
    assert httpx.get(f"{server.base_url}/docs", headers={"Origin": f"http://localhost:{server.port}"}).status_code == 200
    assert httpx.post(f"{server.base_url}{CHAT}", json=HI, timeout=30).status_code == 200


def test_an_origin_in_other_case_gets_both_the_answer_and_cors_headers(server):
    """Guard and CORS agree (trial 24: `Origin: http://LOCALHOST:3000` ran but had no CORS header, its
    preflight got 400): a scheme and host match case-insensitively, and the header echoes the Origin sent."""
    for origin in ("http://GOOD.example", "HTTP://Good.Example", "http://good.example/"):
        r = httpx.get(f"{server.base_url}/v1/models", headers={"Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin, (origin, r.headers)
        r = httpx.options(f"{server.base_url}{CHAT}", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin, (origin, r.text)
    r = httpx.options(f"{server.base_url}{CHAT}", headers={"Origin": "http://EVIL.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    _refused(httpx.get(f"{server.base_url}/v1/models", headers={"Origin": "http://EVIL.example"}), "cors_not_allowed")


def test_a_plain_options_gets_204_with_allow_and_a_foreign_one_403(server):
    r = httpx.options(f"{server.base_url}{CHAT}")
    assert r.status_code == 204 and r.headers["allow"] == "OPTIONS, POST", r.text
    assert httpx.options(f"{server.base_url}/nope").status_code == 404
    _refused(httpx.options(f"{server.base_url}{CHAT}", headers={"Origin": "http://evil.example"}), "cors_not_allowed")


def test_dns_rebinding_host_names_are_refused(server):
    _refused(httpx.get(f"{server.base_url}/v1/models", headers={"Host": f"evil.example:{server.port}"}),
             "host_not_allowed")
    _refused(httpx.get(f"{server.base_url}/health", headers={"Host": "127.0.0.1.evil.example"}), "host_not_allowed")
    for host in ("localhost", f"localhost:{server.port}", "app.localhost", "127.0.0.2:1", "[::1]", f"[::1]:{server.port}"):
        assert httpx.get(f"{server.base_url}/v1/models", headers={"Host": host}).status_code == 200, host


def test_an_absolute_form_target_names_the_host_that_is_checked(server):
    """RFC 9112 §3.2.2: the target's authority stands for ``Host`` (a loopback ``Host`` beside it changes nothing)."""
    for authority, status in ((f"evil.example:{server.port}", b"403"), (f"127.0.0.1:{server.port}", b"200")):
        got = send_raw(server.base_url, f"GET http://{authority}/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        "Connection: close\r\n\r\n".encode())
        assert got.startswith(b"HTTP/1.1 " + status + b" "), (authority, got)


def test_legacy_ipv4_forms_of_loopback_are_loopback_hosts(server):
    """inet_aton's shorthand (trial 24: `Host: 127.1:PORT` got 403); a private shorthand stays refused."""
    for host in ("127.1", f"127.1:{server.port}", "127.0.1", "2130706433", f"0x7f.1:{server.port}", "0177.1"):
        assert httpx.get(f"{server.base_url}/v1/models", headers={"Host": host}).status_code == 200, host
    for host in (f"10.1:{server.port}", "0x0a.1", "127.1 evil.example", "127.1.evil.example", "4294967296"):
        _refused(httpx.get(f"{server.base_url}/v1/models", headers={"Host": host}), "host_not_allowed")


def test_cors_origins_as_browsers_send_them():
    from steam_persona.common.errors import UserError
    from steam_persona.serve.cli import cors_origins

    assert cors_origins(["http://Example.com:80/", "https://b.example:443", "http://localhost:3000", "*"]) == (
        "http://example.com", "https://b.example", "http://localhost:3000", "*")
    with pytest.raises(UserError, match="is no origin"):
        cors_origins(["http://localhost:99999"])


def test_a_page_from_the_host_it_was_served_by_is_its_own_origin():
    """An --insecure server reached by its network address: /docs' "Try it out" sends Origin = http:// + Host."""
    from steam_persona.serve.errors import RequestError
    from steam_persona.serve.local_guard import check_local

    def scope(origin):
        return {"headers": [(b"host", b"192.168.1.5:8000"), (b"origin", origin.encode())], "server": ("0.0.0.0", 8000)}

    check_local(scope("http://192.168.1.5:8000"), (), loopback_bind=False)
    check_local(scope("HTTP://192.168.1.5:8000"), (), loopback_bind=False)
    with pytest.raises(RequestError, match="refused"):
        check_local(scope("http://evil.example"), (), loopback_bind=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steam_persona", "serve", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args, says", [
    (("--port", "99999"), "--port 99999: must be 0–65535"),
    (("--port", "-1"), "--port -1: must be 0–65535"),
    (("--read_timeout", "nan"), "--read_timeout nan"),
    (("--request_timeout", "inf"), "--request_timeout inf"),
    (("--shutdown_timeout", "nan"), "--shutdown_timeout nan"),
    (("--shutdown_timeout", "-1"), "--shutdown_timeout -1"),
    (("--cors_origins", "not a url"), "--cors_origins 'not a url' is no origin"),
    (("--cors_origins", "http://localhost:3000/app"), "is no origin"),
    (("--n_gpu_layers", "-7"), "--n_gpu_layers -7: must be -1 (all), 0 (none) or more"),
    (("--host", "localhost:80", "--insecure"), "--host localhost:80: put the port in --port (--host localhost --port 80)"),
    (("--host", "[::1]:8080"), "--host [::1]:8080: put the port in --port"),
])
def test_flags_that_cannot_work_are_one_line_exit_2(smollm2_gguf, args, says):
    out = _cli(str(smollm2_gguf), *args)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_port_0_prints_the_port_actually_bound(smollm2_gguf):
    proc = subprocess.Popen([sys.executable, "-m", "steam_persona", "serve", str(smollm2_gguf), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Uvicorn running on" in line:
                break
        text = "".join(lines)
        ports = set(re.findall(r"127\.0\.0\.1:(\d+)", text))
        assert len(ports) == 1 and "0" not in ports, text
        (port,) = ports
        assert f"Endpoint URL http://127.0.0.1:{port}/v1" in text
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_a_second_ctrl_c_during_a_stream_quits_at_once_with_130(smollm2_gguf, tmp_path):
    """The open stream's last event is 503 shutting_down, a request still waiting for the model gets
    that 503 as its answer, and both have their --log_file rows (fix 22 left them without)."""
    long = {"messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 1024,
            "stream": True}
    log = tmp_path / "requests.jsonl"
    with start_server(smollm2_gguf, extra_args=("--log_file", log)) as srv:
        started, lines, answers = threading.Event(), [], {}

        def stream():
            try:
                with httpx.stream("POST", f"{srv.base_url}{CHAT}", json=long, timeout=60,
                                  headers={"X-Request-Id": "cut-stream"}) as r:
                    for line in r.iter_lines():
                        lines.append(line)
                        started.set()
            except httpx.HTTPError as e:
                lines.append(f"broken: {e!r}")

        def queued():
            try:
                answers["queued"] = httpx.post(f"{srv.base_url}{CHAT}", json=HI, timeout=60,
                                               headers={"X-Request-Id": "cut-queued"})
            except httpx.HTTPError as e:
                answers["queued"] = e
        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        assert started.wait(30)
        waiter = threading.Thread(target=queued, daemon=True)
        waiter.start()
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        t = time.perf_counter()
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(10) == 130 and time.perf_counter() - t < 2
        reader.join(10)
        waiter.join(10)
        out = srv.output()
        assert "Traceback" not in out and "forced quit (Ctrl-C during shutdown): 2 running request(s) cut" in out, out
        data = [line for line in lines if line.startswith("data: ")]
        assert not lines[-1].startswith("broken") and len(data) > 1, lines[-3:]
        last = json.loads(data[-1][6:])
        assert last["error"]["code"] == "shutting_down" and last["error"]["type"] == "server_error", last
        r = answers["queued"]
        assert isinstance(r, httpx.Response) and r.status_code == 503, r
        assert r.json()["error"]["code"] == "shutting_down" and r.headers["retry-after"] == "5"
        assert r.headers["x-request-id"] == "cut-queued"
        cut_stream, cut_queued = log_rows(log, ["cut-stream", "cut-queued"], timeout=1)
        assert cut_stream["status"] == 200 and cut_stream["error_code"] == "shutting_down", cut_stream
        assert cut_stream["forced_quit"] is True and cut_stream["stream"] is True, cut_stream
        assert cut_queued["status"] == 503 and cut_queued["error_code"] == "shutting_down", cut_queued
        assert cut_queued["forced_quit"] is True, cut_queued


def test_one_ctrl_c_drains_and_exits_130(smollm2_gguf):
    with start_server(smollm2_gguf) as srv:
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(20) == 130
        assert "Traceback" not in srv.output()


def test_an_http2_preface_gets_one_505_and_the_connection_closed(server):
    assert_one_505_for_http2(server.base_url)


def test_a_context_llama_cpp_cannot_create_is_blamed_on_n_ctx(smollm2_gguf):
    from steam_persona.serve.cli import _load_error
    from steam_persona.serve.modelinfo import read_model_info

    info = read_model_info(str(smollm2_gguf))
    err = _load_error(info, 99999999, ValueError("Failed to create llama_context"))
    assert str(err) == ("serve: llama.cpp could not allocate a context of 99999999 tokens; lower --n_ctx "
                        "(the model was trained on 8,192 tokens)")
    assert str(_load_error(info, 512, ValueError("bad file"))).endswith("could not load the model (bad file)")


def test_an_n_ctx_whose_kv_cache_cannot_fit_is_refused_before_llama_cpp_allocates(smollm2_gguf):
    """``--n_ctx 99999999`` took 5.2 GB and 16 s before llama.cpp failed to create its context."""
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "steam_persona", "serve", str(smollm2_gguf), "--n_ctx", "99999999",
                        "--n_gpu_layers", "0", "--port", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and time.monotonic() - started < 20, r.stderr
    assert r.stderr.strip().splitlines() == [re.sub(r"\s+", " ", r.stderr.strip())], r.stderr  # one line
    assert re.fullmatch(r"Error: command line: --n_ctx 99999999: its KV cache needs 2\.1 TiB, this machine has "
                        r"[\d.,]+ [GMT]iB free beside the model's weights; lower --n_ctx "
                        r"\(the model was trained on 8,192 tokens\)", r.stderr.strip()), r.stderr
    assert "llama_context" not in r.stderr  # llama.cpp never began a context


def test_kv_fits_counts_every_llama_server_slot(smollm2_gguf):
    from steam_persona.common.errors import UserError
    from steam_persona.serve.modelinfo import check_kv_fits, read_model_info

    info = read_model_info(smollm2_gguf)
    memory = info.file_bytes + 4096 * info.kv_bytes_per_token
    check_kv_fits(info, 4096, memory_bytes=memory)
    with pytest.raises(UserError, match=r"^--n_ctx 2048 × --parallel 4: its KV cache needs 180\.0 MiB, this "
                                        r"machine has 90\.0 MiB free"):
        check_kv_fits(info, 2048, 4, memory_bytes=memory)


def test_an_n_ctx_above_the_training_context_that_fits_is_served_with_one_warning(smollm2_gguf):
    with start_server(smollm2_gguf, extra_args=("--n_ctx", "16384", "--n_gpu_layers", "0")) as srv:
        assert httpx.get(f"{srv.base_url}/health").json()["n_ctx"] == 16384
        warnings = [line for line in srv.output().splitlines() if line.startswith("warning:")]
        assert warnings == ["warning: --n_ctx 16384 exceeds the model's training context 8192; quality may drop "
                            "past it"], srv.output()

"""``server_client.py`` as both packaged plugins import it (a top-level module at the plugin root):
``python -m pytest tests`` in an unpacked plugin. The main suite runs these in each plugin's folder
(``tests/test_plugin_package.py``); ``tests/test_plugin_runtime.py`` covers its HTTP paths against a
real ``steam-train serve``."""

import pytest

import server_client as sc


def test_endpoints_and_docker_hint():
    assert sc.normalize_endpoint(" http://h:8000/v1/ ") == "http://h:8000/v1"
    assert sc.normalize_endpoint("http://h:8000") == "http://h:8000/v1"
    assert sc.server_root("http://h:8000/v1") == "http://h:8000"
    with pytest.raises(sc.ServerError, match="not an http"):
        sc.normalize_endpoint("h:8000/v1")
    assert "host.docker.internal:9000" in sc.docker_hint("http://localhost:9000/v1")
    assert "host-gateway" in sc.docker_hint("http://127.0.0.1:8000/v1")
    assert sc.docker_hint("http://host.docker.internal:8000/v1") == ""


def test_messages_and_counting():
    assert sc.flatten_content([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "a\nb"
    image = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert sc.flatten_content(image) == image
    assert sc.prepare_messages([{"role": "user", "content": "hi"}], system="S")[0] == {"role": "system", "content": "S"}
    assert len(sc.prepare_messages([{"role": "system", "content": "T"}], system="S")) == 1
    assert sc.render_chatml([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert sc.estimate_tokens("你好abcd") == 3


def test_errors_and_switches():
    err = sc.error_for_status(400, '{"error": {"message": "This model\'s maximum context length is 2048 tokens."}}', "u")
    assert (err.kind, err.status) == ("bad_request", 400) and "maximum context length is 2048" in str(err)
    assert sc.error_for_status(401, "", "u").kind == "auth"
    assert sc.error_for_status(503, "busy", "u").kind == "server"
    assert [sc.is_on(v) for v in ("enabled", "true", True, "disabled", None, "")] == [True, True, True, False, False, False]

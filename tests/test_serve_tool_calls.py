"""Tools in ``tool_choice`` "auto" mode (serve/tool_calls.py): refused on a template that shows the
model no tools (SmolLM2's), parsed from Hermes ``<tool_call>`` blocks on one that asks for them
(Qwen2.5's). The parser and the stream buffer are tested on text; the live tests run real servers:
SmolLM2, and SmolLM2's weights with Qwen2.5's chat template (the tiny model never writes a
``<tool_call>`` block by itself, so a request grammar makes it write one)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest
from pydantic import BaseModel

from steam_persona.common.errors import UserError
from steam_persona.serve.errors import RequestError
from steam_persona.serve.llama_server import find_binary
from steam_persona.serve.tool_calls import (ToolCallStream, arguments_as_objects, check_auto_tools,
                                            parse_tool_calls, parses_calls, shows_tools, with_tool_calls)
from tests.serving import serve_process

CHAT = "/v1/chat/completions"
PRICE = {"type": "function", "function": {"name": "get_price", "description": "Price of a Steam game in USD.",
                                          "parameters": {"type": "object", "properties": {"game": {"type": "string"}},
                                                         "required": ["game"]}}}
HI = [{"role": "user", "content": "How much is Portal?"}]
CALL_TEXT = '<tool_call>\n{"name": "get_price", "arguments": {"game": "Portal 2"}}\n</tool_call>'
#: An agent's second turn: the call the model made (OpenAI form: arguments as a JSON string) and its result.
HISTORY = [*HI, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_price", "arguments": '{"game": "Portal 2"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "9.99"}]
TWO_CALLS = ('Let me look.\n' + CALL_TEXT + '\n<tool_call>\n{"name": "rate", "arguments": {"ok": true, "why": "好"}}'
             '\n</tool_call>')


class Price(BaseModel):
    """Price of a Steam game in USD."""

    game: str


def _gbnf(text: str) -> str:
    """A grammar whose only sentence is ``text`` (JSON string escapes are GBNF literal escapes here)."""
    return "root ::= " + json.dumps(text)


@pytest.fixture(scope="module")
def qwen_template(qwen_tokenizer_dir) -> str:
    return (qwen_tokenizer_dir / "chat_template.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def smol_template(smollm2_gguf) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    llm.close()
    return template


def _formatter(template: str):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="")


@pytest.fixture(scope="module")
def qwen_gguf(smollm2_gguf, qwen_tokenizer_dir, tmp_path_factory):
    """SmolLM2's GGUF with its ``tokenizer.chat_template`` replaced by Qwen2.5's (gguf's own
    ``gguf_new_metadata`` script; both templates are ChatML, so the tokens match)."""
    out = tmp_path_factory.mktemp("qwen-template") / "smollm2-qwen-template.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(smollm2_gguf), str(out),
                    "--chat-template-file", str(qwen_tokenizer_dir / "chat_template.jinja"), "--force"],
                   check=True, capture_output=True)
    return out


# --- the parser ---------------------------------------------------------------------------------

def test_blocks_become_tool_calls_and_the_rest_is_content():
    content, calls = parse_tool_calls(TWO_CALLS)
    assert content == "Let me look."
    assert [c["function"] for c in calls] == [{"name": "get_price", "arguments": '{"game": "Portal 2"}'},
                                             {"name": "rate", "arguments": '{"ok": true, "why": "好"}'}]
    assert all(c["type"] == "function" and c["id"].startswith("call_") and len(c["id"]) == 29 for c in calls)
    assert calls[0]["id"] != calls[1]["id"]
    assert parse_tool_calls(CALL_TEXT + "\n")[0] is None  # nothing outside the block: content null


@pytest.mark.parametrize("text", [TWO_CALLS, "  Hm.\n\n" + CALL_TEXT + "\nThen: \n" + CALL_TEXT + " \n", CALL_TEXT,
                                  "A\n<tool_call>[]</tool_call>\n" + CALL_TEXT + "B\n"])
def test_streamed_content_is_the_non_streamed_content(text):
    for size in (1, 4, 1000):
        streamed = "".join(d.get("content", "") for d in _run(_split(text, size)))
        assert streamed == (parse_tool_calls(text)[0] or "")


@pytest.mark.parametrize("text", [
    "Portal costs $9.99.",
    '<tool_call>\n{"name": "get_price", "arguments": {"game": \n</tool_call>',  # invalid JSON
    '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
    '<tool_call>\n["get_price"]\n</tool_call>',  # not an object
    '<tool_call>\n{"name": "get_price", "arguments": 5}\n</tool_call>',  # arguments not an object
    '<tool_call>\n{"name": "get_price", "arguments": {}}',  # unclosed (cut by max_tokens)
])
def test_text_that_is_not_a_valid_call_stays_content_unchanged(text):
    assert parse_tool_calls(text) == (text, [])


def test_an_invalid_block_stays_content_beside_a_valid_one():
    bad = '<tool_call>{"name": oops}</tool_call>'
    content, calls = parse_tool_calls(bad + "\n" + CALL_TEXT)
    assert content == bad and [c["function"]["name"] for c in calls] == ["get_price"]


def test_arguments_sent_as_a_string_are_kept_and_missing_ones_are_empty():
    _, calls = parse_tool_calls('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>'
                                '<tool_call>{"name": "b"}</tool_call>')
    assert [c["function"]["arguments"] for c in calls] == ['{"x": 1}', "{}"]


# --- the stream buffer --------------------------------------------------------------------------

def _split(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _run(pieces: list[str]) -> list[dict]:
    stream = ToolCallStream()
    deltas = [d for piece in pieces for d in stream.feed(piece)]
    return deltas + stream.finish()


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_streamed_calls_come_as_openai_deltas_whatever_the_piece_size(size):
    deltas = _run(_split(TWO_CALLS, size))
    assert "".join(d.get("content", "") for d in deltas) == "Let me look."
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    # per index: the first delta has id, type and name with empty arguments, the second only arguments
    assert [sorted(c) for c in calls] == [["function", "id", "index", "type"], ["function", "index"]] * 2
    assert [c["index"] for c in calls] == [0, 0, 1, 1]
    assert [c["function"] for c in calls] == [{"name": "get_price", "arguments": ""},
                                             {"arguments": '{"game": "Portal 2"}'},
                                             {"name": "rate", "arguments": ""},
                                             {"arguments": '{"ok": true, "why": "好"}'}]


@pytest.mark.parametrize("text", ["Plain text with a < and <tool and </tool_call> in it.\n\n",
                                  "\n<tool_call>[]</tool_call>\n",
                                  "a <tool_cal", "  ",
                                  '<tool_call>{"name": oops}</tool_call> after',
                                  'before <tool_call>{"name": "x", "arguments": {}'])
def test_streamed_text_without_valid_calls_passes_through_unchanged(text):
    for size in (1, 2, 5):
        deltas = _run(_split(text, size))
        assert all(set(d) == {"content"} for d in deltas)
        assert "".join(d["content"] for d in deltas) == text


def test_plain_text_is_not_held_back_beyond_a_possible_tag_start():
    stream = ToolCallStream()
    assert stream.feed("Portal is") == [{"content": "Portal is"}]
    assert stream.feed(" great <tool") == [{"content": " great"}]  # "<tool" may begin <tool_call>
    assert stream.feed("kit>") == [{"content": " <toolkit>"}]


def _chunk(delta, finish=None):
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def test_library_chunks_get_tool_call_deltas_and_finish_tool_calls():
    chunks = [_chunk({"role": "assistant"})] + [_chunk({"content": p}) for p in _split(CALL_TEXT, 4)]
    out = list(with_tool_calls(iter(chunks + [_chunk({}, "stop")]), stream=True))
    assert out[0] == chunks[0]
    assert [c["choices"][0]["finish_reason"] for c in out] == [None] * 3 + ["tool_calls"]
    assert out[1]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "get_price", "arguments": ""}
    assert all(c["id"] == "chatcmpl-1" and c["object"] == "chat.completion.chunk" for c in out)
    cut = list(with_tool_calls(iter(chunks[:3] + [_chunk({}, "length")]), stream=True))
    assert [c["choices"][0]["finish_reason"] for c in cut][-1] == "length"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in cut) == CALL_TEXT[:8]


def test_a_message_gets_tool_calls_and_null_content():
    message = {"role": "assistant", "content": CALL_TEXT}
    result = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    choice = with_tool_calls(result, stream=False)["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_price", "arguments": '{"game": "Portal 2"}'}


def test_history_calls_render_as_the_model_wrote_them(qwen_template):
    prompt = _formatter(qwen_template)(messages=arguments_as_objects(HISTORY)).prompt
    assert CALL_TEXT + "<|im_end|>" in prompt and "<tool_response>\n9.99\n</tool_response>" in prompt
    assert HISTORY[1]["tool_calls"][0]["function"]["arguments"] == '{"game": "Portal 2"}'  # the request is kept
    odd = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "not json"}}, "x",
                                                {"function": {"name": "g", "arguments": "[1]"}}]}]
    assert arguments_as_objects(odd) == odd


# --- which templates show tools; which requests are refused or parsed ----------------------------

def test_qwen_template_shows_tools_and_smollm2_template_does_not(qwen_template, smol_template):
    assert shows_tools(_formatter(qwen_template)) is True
    assert shows_tools(_formatter(smol_template)) is False
    assert shows_tools(_formatter(qwen_template), "functions") is False  # Qwen's template renders only `tools`


@pytest.mark.parametrize("request_fields, refused", [
    ({"tools": [PRICE]}, "tools"),
    ({"tools": [PRICE], "tool_choice": "auto"}, "tools"),
    ({"functions": [PRICE["function"]]}, "functions"),
    ({"functions": [PRICE["function"]], "function_call": "auto"}, "functions"),
    ({"tools": [PRICE], "tool_choice": "none"}, None),
    ({"tools": [PRICE], "tool_choice": {"type": "function", "function": {"name": "get_price"}}}, None),
    ({"tools": [PRICE], "function_call": {"name": "get_price"}}, None),
    ({"tools": []}, None),
    ({}, None),
])
def test_auto_tools_are_refused_only_where_the_template_hides_them(request_fields, refused, smol_template,
                                                                   qwen_template):
    if refused != "functions":  # Qwen2.5's template renders `tools`, not the legacy `functions`
        check_auto_tools(request_fields, _formatter(qwen_template))
    if refused is None:
        check_auto_tools(request_fields, _formatter(smol_template))
        return
    with pytest.raises(RequestError) as e:
        check_auto_tools(request_fields, _formatter(smol_template))
    assert (e.value.status, e.value.code, e.value.param) == (400, "tools_unsupported", refused)
    assert "does not support tools" in e.value.message


def test_only_auto_requests_on_a_hermes_template_are_parsed(qwen_template, smol_template):
    assert parses_calls({"tools": [PRICE]}, qwen_template)
    assert not parses_calls({"tools": [PRICE], "tool_choice": "none"}, qwen_template)
    assert not parses_calls({"tools": [PRICE], "tool_choice": {"type": "function", "function": {"name": "x"}}},
                            qwen_template)
    assert not parses_calls({}, qwen_template)
    assert not parses_calls({"tools": [PRICE]}, smol_template)


# --- live servers -------------------------------------------------------------------------------

def test_smollm2_server_refuses_auto_tools_and_keeps_forced_calls(smollm2_gguf):
    with serve_process(smollm2_gguf, extra_args=("--max_tokens_cap", "16")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        for extra in ({}, {"tool_choice": "auto"}):
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="m", messages=HI, tools=[PRICE], **extra)
            assert e.value.code == "tools_unsupported" and e.value.body["param"] == "tools"
        r = httpx.post(f"{url}{CHAT}", json={"messages": HI, "tools": [PRICE], "stream": True}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "tools_unsupported"
        forced = client.chat.completions.create(model="m", messages=HI, tools=[PRICE], tool_choice="required",
                                                max_tokens=16)
        assert forced.choices[0].message.tool_calls[0].function.name == "get_price"
        plain = client.chat.completions.create(model="m", messages=HI, tools=[PRICE], tool_choice="none", max_tokens=4)
        assert plain.choices[0].message.tool_calls is None and plain.usage.completion_tokens == 4


def _llama_server() -> bool:
    try:
        return find_binary(None) is not None
    except UserError:
        return False


@pytest.mark.parametrize("engine", ["llama-cpp-python", pytest.param("llama-server", marks=pytest.mark.skipif(
    not _llama_server(), reason="no llama-server binary (build it with `make llama-server`)"))])
def test_qwen_template_server_returns_hermes_blocks_as_tool_calls(qwen_gguf, engine):
    args = ("--max_tokens_cap", "64", "--n_ctx", "1024", "--engine", engine)
    with serve_process(qwen_gguf, extra_args=args) as url:
        counted = [httpx.post(f"{url}/extras/tokenize/chat", json={"messages": HI, **extra}).json()["count"]
                   for extra in ({}, {"tools": [PRICE]})]
        assert counted[1] > counted[0] + 50  # the template shows the tool to the model
        as_object = json.loads(json.dumps(HISTORY))
        as_object[1]["tool_calls"][0]["function"]["arguments"] = {"game": "Portal 2"}
        assert len({httpx.post(f"{url}/extras/tokenize/chat", json={"messages": m}).json()["count"]
                    for m in (HISTORY, as_object)}) == 1
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        forced_text = {"grammar": _gbnf("Checking.\n" + CALL_TEXT), "temperature": 0}
        done = client.chat.completions.create(model="m", messages=HI, tools=[PRICE], extra_body=forced_text)
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
        assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
            ("get_price", {"game": "Portal 2"})]
        tool = openai.pydantic_function_tool(Price, name="get_price")
        with client.chat.completions.stream(model="m", messages=HI, tools=[tool], extra_body=forced_text) as stream:
            final = stream.get_final_completion()
        call = final.choices[0].message.tool_calls[0]
        assert final.choices[0].finish_reason == "tool_calls" and final.choices[0].message.content == "Checking."
        assert call.function.name == "get_price" and call.function.parsed_arguments == Price(game="Portal 2")
        assert call.id.startswith("call_")
        raw = httpx.post(f"{url}{CHAT}", timeout=60, json={
            "messages": HI, "tools": [PRICE], "stream": True, "stream_options": {"include_usage": True}, **forced_text})
        chunks = [json.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: {")]
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        assert [d["tool_calls"][0]["function"] for d in deltas if "tool_calls" in d] == [
            {"name": "get_price", "arguments": ""}, {"arguments": '{"game": "Portal 2"}'}]
        assert "".join(d.get("content") or "" for d in deltas) == "Checking."
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 10
        plain = client.chat.completions.create(model="m", messages=HI, tools=[PRICE], max_tokens=32,
                                               extra_body={"grammar": _gbnf("Portal costs $9.99.")})
        assert plain.choices[0].message.content == "Portal costs $9.99." and plain.choices[0].message.tool_calls is None
        assert plain.choices[0].finish_reason == "stop"


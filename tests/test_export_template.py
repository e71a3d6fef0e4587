"""The persona as the chat template's default system prompt, and the end-of-turn eos, on the
real templates: Qwen2.5 (../shared/models), SmolLM2 (the embedded default's GGUF) and plain ChatML.
Rendered with transformers and with llama-cpp-python's Jinja2 formatter (what our server uses)."""

from __future__ import annotations

import pytest

from steam_persona.export.chat_template import OLLAMA_CHATML, end_of_turn_token, strip_default_system, with_default_system
from steam_persona.common.persona import DEFAULT_SYSTEM

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TRICKY = 'Lao G says "hi" \\o/ — 老G\nline two {{ not jinja }}'


@pytest.fixture(scope="module")
def qwen_tok(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)


@pytest.fixture(scope="module")
def smol_template(smollm2_gguf):
    from llama_cpp import Llama

    llm = Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    llm.close()
    return template


def _render(template: str, messages) -> str:
    """Render as llama-cpp-python's server does (jinja2 sandbox; always with the assistant prompt)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="")(messages=messages).prompt


@pytest.mark.parametrize("which", ["qwen", "smollm2", "chatml"])
@pytest.mark.parametrize("persona", [DEFAULT_SYSTEM, TRICKY])
def test_default_system_is_the_persona_and_a_given_one_wins(which, persona, qwen_tok, smol_template):
    template = {"qwen": qwen_tok.chat_template, "smollm2": smol_template, "chatml": CHATML}[which]
    new = with_default_system(template, persona)
    user = [{"role": "user", "content": "你好"}]
    got = _render(new, user)
    assert got.startswith(f"<|im_start|>system\n{persona}<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n")
    assert "You are Qwen" not in got and "SmolLM" not in got
    # with a system message: exactly the upstream rendering (persona absent)
    sys_user = [{"role": "system", "content": "Be brief."}, *user]
    assert _render(new, sys_user) == _render(template, sys_user)
    assert persona not in _render(new, sys_user)
    # multi-turn keeps the persona only once, at the start
    convo = [*user, {"role": "assistant", "content": "嗨"}, {"role": "user", "content": "再见"}]
    assert _render(new, convo).count(persona) == 1
    # idempotent; removable
    assert with_default_system(new, persona) == new
    assert strip_default_system(new) == template and with_default_system(new, None) == template


def test_transformers_renders_the_rewritten_qwen_template_the_same(qwen_tok):
    new = with_default_system(qwen_tok.chat_template, DEFAULT_SYSTEM)
    msgs = [{"role": "user", "content": "推荐一款游戏"}]
    hf = qwen_tok.apply_chat_template(msgs, chat_template=new, tokenize=False, add_generation_prompt=True)
    assert hf == _render(new, msgs)  # llama-cpp-python always adds the generation prompt
    assert hf.endswith("<|im_start|>assistant\n") and DEFAULT_SYSTEM in hf
    # tools branch of Qwen's template also takes the persona
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    hf_tools = qwen_tok.apply_chat_template(msgs, chat_template=new, tools=tools, tokenize=False)
    assert hf_tools.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}") and "You are Qwen" not in hf_tools


def test_qwen_eos_becomes_im_end(qwen_tokenizer_dir):
    """A base-style Qwen tokenizer (eos <|endoftext|>) gets eos = <|im_end|>, the chat end-of-turn."""
    from transformers import AutoTokenizer

    from steam_persona.export.merge import fix_tokenizer

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    tok.eos_token = "<|endoftext|>"
    assert end_of_turn_token(tok) == "<|im_end|>"
    assert fix_tokenizer(tok, DEFAULT_SYSTEM) == "<|im_end|>"
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645 and tok.pad_token == "<|endoftext|>"
    assert DEFAULT_SYSTEM in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_ollama_template_renders_chatml_like_the_gguf_template():
    """Ollama's Go template, checked by its structure (no Ollama here): system from .System,
    system messages skipped in the loop, assistant prompt opened after the last user turn."""
    assert OLLAMA_CHATML.startswith("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n")
    assert '{{- if ne .Role "system" }}<|im_start|>{{ .Role }}' in OLLAMA_CHATML
    assert OLLAMA_CHATML.count("{{") == OLLAMA_CHATML.count("}}")
    assert '(ne .Role "assistant") }}<|im_start|>assistant\n' in OLLAMA_CHATML


def test_the_export_readme_prints_agreement_like_the_summary():
    """0.7749 is '77.4%' on screen (rounded down: 100 % means every position) and in README.md alike."""
    from steam_persona.export.modelfile import readme
    from steam_persona.export.verify import describe

    v = {"logits": {"top1_agreement": 0.7749, "top1_agreement_decisive": 0.9, "max_abs_diff": 1.5, "passed": True},
         "stop": {"natural_stop": True, "eot_ends_generation": True, "passed": True}, "passed": True}
    text = readme("m", [("m-q4_k_m.gguf", 2**20)], {"verify": {"q4_k_m": v}}, "m-q4_k_m.gguf", 2048)
    assert "| q4_k_m | 77.4% |" in text and "77.4%" in describe(v, is_float=False)
    # trial 38 (7): the llama.cpp lines said 4096 for a model the Modelfile gives 2048
    assert "--model m-q4_k_m.gguf --n_ctx 2048 " in text and "-m m-q4_k_m.gguf --jinja -c 2048 " in text

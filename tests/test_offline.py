"""Nothing leaves the machine at run time: the test network guard (tests/netguard) sees every attempt, and
importing the training stack through `trainer` makes none (bitsandbytes' hub-kernel fetch is kept offline)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import NETLOG, REPO

AVX512_BF16 = "avx512_bf16" in open("/proc/cpuinfo", encoding="utf-8").read()


def _run(code: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run `code` in a fresh interpreter under the guard; return the process and the lines it logged."""
    start = NETLOG.stat().st_size
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "0"})
    with NETLOG.open(encoding="utf-8") as f:
        f.seek(start)
        logged = f.read()
    os.truncate(NETLOG, start)  # the control below is expected to log; keep the autouse check for real leaks
    return r, logged


def test_guard_sees_and_refuses_a_connection():
    r, logged = _run("import socket\ntry:\n    socket.create_connection(('huggingface.co', 443), timeout=5)\n"
                     "except OSError as e:\n    print(e.errno)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "101"  # ENETUNREACH
    assert logged.split()[1:] == ["lookup", "huggingface.co"]


def test_training_stack_imports_without_network():
    code = ("import trainer, peft, bitsandbytes, transformers\n"
            "import bitsandbytes.backends.cpu.ops\n"
            "from bitsandbytes.nn import Linear4bit\n"
            "import huggingface_hub.constants as hub, os\n"
            "print(hub.HF_HUB_OFFLINE, os.environ['USE_HUB_KERNELS'])")
    r, logged = _run(code)
    assert r.returncode == 0, r.stderr
    assert logged == ""
    assert r.stdout.split() == ["False", "NO"]  # the hub stays usable for the models a user names
    assert "kernels-community" not in r.stderr and "trust check" not in r.stderr


@pytest.mark.skipif(not AVX512_BF16, reason="bitsandbytes tries the hub only on CPUs with AVX512-BF16")
def test_bitsandbytes_alone_would_reach_the_hub():
    """The control: without `trainer`'s guard, importing bitsandbytes asks the hub for a kernel."""
    r, logged = _run("import bitsandbytes")
    assert r.returncode == 0, r.stderr
    assert "lookup huggingface.co" in logged


def test_export_imports_the_training_stack_offline_and_quietly():
    """`export` never imports `trainer` itself; its merge imports peft → bitsandbytes. The trial saw
    bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" (a hub kernel fetch) and
    peft's `is_gradient_checkpointing` FutureWarning there."""
    code = ("import warnings\nimport steam_persona.export.merge, peft, bitsandbytes\n"
            "warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6.', FutureWarning)")
    r, logged = _run(code)
    assert r.returncode == 0, r.stderr
    assert logged == ""
    assert "kernels-community" not in r.stderr and "gemm_4bit" not in r.stderr
    assert "is_gradient_checkpointing" not in r.stderr


def test_a_mistyped_local_model_path_fails_at_once_without_a_hub_lookup(tmp_path, monkeypatch):
    """Regression (F3): `saves/typo-run` beside an existing `saves/` was taken for a hub id and retried against
    huggingface.co for ~55 s (22 log lines) before the error; a path of more than two parts cannot be a hub id."""
    from steam_persona.common.errors import UserError
    from steam_persona.common.hub import resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "saves").mkdir()
    with pytest.raises(UserError, match=r"^saves/typo-run: model folder not found \(saves/ is a local folder"):
        resolve_model("saves/typo-run")
    for value in ("runs/a/b", "./typo", "~/no-such-model-dir"):
        with pytest.raises(UserError, match="model folder not found; check --model_name_or_path"):
            resolve_model(value)
    (tmp_path / "x.json").write_text('[{"instruction": "hi", "output": "yo"}]', encoding="utf-8")
    for stage in (["train", "--dataset", "x.json", "--output_dir", "out"], ["chat"]):
        r = subprocess.run([sys.executable, "-m", "steam_persona", *stage, "--model_name_or_path", "saves/typo-run"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 2 and "saves/typo-run: model folder not found" in r.stderr, r.stderr
        assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [r.stderr.strip()], r.stderr  # one line


def test_a_folder_that_holds_no_model_is_one_line(tmp_path, monkeypatch):
    """Trial 40 (N1): `--model_name_or_path data` (or a run dir) ended chat, eval and train in a transformers
    traceback ("Unrecognized model", "Couldn't instantiate the backend tokenizer"), exit 1."""
    from steam_persona.common.errors import UserError
    from steam_persona.common.hub import resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text("{}", encoding="utf-8")
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(UserError, match=r"^data: no model here \(no config.json or .gguf\); pass a Hugging Face"):
        resolve_model("data")
    with pytest.raises(UserError, match=r"^run: no model here .*; it is a training run: pass it as --adapter_name"):
        resolve_model("run")
    r = subprocess.run([sys.executable, "-m", "steam_persona", "chat", "--model_name_or_path", "data"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["Error: data: no model here (no config.json or "
                                                                   ".gguf); pass a Hugging Face model folder, a .gguf "
                                                                   "file, a hub id or smollm2"], r.stderr


def test_an_uncached_hub_id_with_the_hub_unreachable_fails_at_once(monkeypatch):
    """huggingface_hub retries an unreachable hub for about a minute and has no setting for fewer retries: one
    short connection decides instead. With HF_HUB_OFFLINE set nothing is probed (transformers fails at once)."""
    import time

    from huggingface_hub import constants

    from steam_persona.common.errors import UserError
    from steam_persona.common.hub import resolve_model

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"^nobody-xyz/no-such-model: no local folder of that name, not in the HF "
                                        r"cache, and http://127.0.0.1:9 is not reachable .*check --model_name_or_path"):
        resolve_model("nobody-xyz/no-such-model")
    assert time.monotonic() - t0 < 5
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("nobody-xyz/no-such-model").path == "nobody-xyz/no-such-model"

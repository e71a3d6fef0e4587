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

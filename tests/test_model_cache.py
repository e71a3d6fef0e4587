"""Loading GGUF bases: the cache of dequantized copies (``~/.cache/steam-persona/gguf``) stays bounded, and no raw progress bar is printed."""

from __future__ import annotations

import os


def test_prune_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    from steam_persona.trainer import model

    monkeypatch.setenv("STEAM_PERSONA_CACHE", str(tmp_path))
    for i, name in enumerate(["a", "b", "c"]):
        (model.cache_dir() / name).mkdir(parents=True)
        (model.cache_dir() / name / "config.json").write_text("{}")
        os.utime(model.cache_dir() / name, (1000 + i, 1000 + i))
    os.utime(model.cache_dir() / "a")  # used just now
    (model.cache_dir() / "partial").mkdir()  # no config.json: not an entry, left alone
    deleted = model.prune_cache(model.CACHE_KEEP)
    assert [p.name for p in deleted] == ["b"] and model.CACHE_KEEP == 2
    assert sorted(p.name for p in model.cache_dir().iterdir()) == ["a", "c", "partial"]


def test_the_gguf_loader_prints_no_raw_progress_bar():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from steam_persona.common.hub import enable_transformers_gguf

    enable_transformers_gguf()
    assert gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...").disable


def test_a_gguf_base_is_dequantized_in_bfloat16_without_the_packed_weights_warning(tmp_path, monkeypatch, capfd):
    """Regression: `eval --gguf` and the first train printed transformers' "Loading a GGUF checkpoint with
    its weights packed is fastest in float32 … Pass `dtype=torch.float32`"; the cached copy is a plain
    bf16 checkpoint."""
    import json

    from safetensors import safe_open

    from steam_persona.common.hub import resolve_model
    from steam_persona.trainer import model

    monkeypatch.setenv("STEAM_PERSONA_CACHE", str(tmp_path))
    path = model.hf_path(resolve_model("smollm2"))
    err = capfd.readouterr().err
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf to an HF checkpoint once" in err
    assert "Loading a GGUF checkpoint" not in err and "dtype=torch.float32" not in err
    # transformers' own tqdm bars stay out of our output (trial 26: "Loading weights: 0%| …" in log files)
    assert "Loading weights" not in err and "Writing model shards" not in err and "%|" not in err, err
    assert "quantization_config" not in json.loads((tmp_path / "gguf" / path.rsplit("/", 1)[1] / "config.json").read_text())
    with safe_open(f"{path}/model.safetensors", "pt") as f:
        assert len(list(f.keys())) == 272 and {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}

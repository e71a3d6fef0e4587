"""The typed run record (common/run_record.py): where it is found, what it holds, bad files."""

from __future__ import annotations

import pytest

from steam_persona.common.errors import UserError
from steam_persona.common.run_record import RunRecord

RUN = """model_name_or_path: smollm2
quantization_bit: 4
dataset:
- steam_reviews
dataset_dir: data
template: qwen
system: 你是老G
cutoff_len: 384
lora_rank: 8
"""


def test_load_from_run_dir_or_checkpoint_typed(tmp_path):
    (tmp_path / "run_config.yaml").write_text(RUN, encoding="utf-8")
    (tmp_path / "checkpoint-2").mkdir()
    for d in (tmp_path, tmp_path / "checkpoint-2"):
        r = RunRecord.load(d)
        assert r.path == tmp_path / "run_config.yaml"
        assert (r.model_name_or_path, r.quantization_bit, r.template, r.system, r.cutoff_len) == ("smollm2", 4, "qwen", "你是老G", 384)
        assert (r.dataset, r.dataset_dir, r.trust_remote_code, r.raw["lora_rank"]) == (["steam_reviews"], "data", False, 8)
    empty = RunRecord.load(tmp_path / "checkpoint-2" / "nowhere")
    assert empty == RunRecord() and (empty.path, empty.system, empty.raw) == (None, None, {})
    assert RunRecord.load(None) == RunRecord()


def test_hand_written_dataset_string_becomes_list(tmp_path):
    (tmp_path / "run_config.yaml").write_text("dataset: a.json, b\nsystem: ''\n", encoding="utf-8")
    r = RunRecord.load(tmp_path)
    assert r.dataset == ["a.json", "b"] and r.system == ""


def test_quantization_bit_has_the_flag_s_one_rule(tmp_path):
    (tmp_path / "run_config.yaml").write_text("quantization_bit: 0\n", encoding="utf-8")
    assert RunRecord.load(tmp_path).quantization_bit is None  # 0 = a 16-bit base, as on the command line


@pytest.mark.parametrize("text, expected", [
    ("system: [unclosed\n", "run_config.yaml: invalid YAML"),
    ("quantization_bit: 3\n", "run_config.yaml: 'quantization_bit': Value error, use 4 \\(QLoRA\\) or 8 bits"),
    ("- a\n- b\n", "run_config.yaml: expected a mapping of settings, got list"),
    ("cutoff_len: lots\n", "run_config.yaml: 'cutoff_len': Input should be a valid integer"),
])
def test_bad_file_is_one_clear_error(tmp_path, text, expected):
    (tmp_path / "run_config.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=expected):
        RunRecord.load(tmp_path)

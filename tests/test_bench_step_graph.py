"""bench/step_graph.py on CPU: the static layout of a packed row and its loss. The capture itself needs CUDA
(bench/train_speed.py's ``ours-graph`` stack runs it on a GPU and compares the trained loss with eager)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from steam_persona.trainer import accel
from steam_persona.trainer.packing import collate, loss_sum

from test_accel import _feats, _lora_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import step_graph  # noqa: E402


def test_layout_pads_a_row_to_its_bucket_with_one_segment_of_padding():
    batch = collate(_feats(), True, pad_token_id=0)  # samples of 7, 12 and 5 tokens
    row = step_graph.layout(batch, pad_token_id=9, row_bucket=16, segment_bucket=8)
    assert row.input_ids.shape == row.position_ids.shape == row.shift_labels.shape == (1, 32)
    assert row.input_ids[0, 24:].tolist() == [9] * 8 and row.position_ids[0, 24:].tolist() == list(range(8))
    assert row.cu_seqlens.tolist() == [0, 7, 19, 24, 32, 32, 32, 32, 32]  # 4 segments + 4 empty ones
    assert row.max_length == 32 and not row.uniform and row.tokens == 24
    assert row.shift_labels[0, :23].tolist() == batch["labels"][0, 1:].tolist()
    assert set(row.shift_labels[0, 23:].tolist()) == {-100}  # the last real position and the padding
    assert row.key == (32, 9, 32, False)


def test_layout_keeps_a_row_of_equal_samples_exact():
    feats = [{"input_ids": list(range(1, 9)), "labels": list(range(1, 9))} for _ in range(3)]
    row = step_graph.layout(collate(feats, True, pad_token_id=0), pad_token_id=0, row_bucket=16)
    assert row.input_ids.shape == (1, 24) and row.cu_seqlens.tolist() == [0, 8, 16, 24]
    assert row.uniform and row.max_length == 8 and row.key == (24, 4, 8, True)


def test_layout_refuses_a_padded_batch():
    with pytest.raises(ValueError, match="one packed row"):
        step_graph.layout(collate(_feats(), False, pad_token_id=0), pad_token_id=0)


@pytest.mark.parametrize("row_bucket", [1, 16, 64])
def test_row_loss_of_the_padded_layout_equals_the_packed_row(tiny_qwen2_dir, row_bucket):
    """Padding (an extra sample without labels) and empty segments change neither the loss sum nor the LoRA
    gradients of the real samples."""
    model = _lora_model(tiny_qwen2_dir)
    accel.apply_fast_path(model, fused_loss="chunked")
    batch = collate(_feats(), True, pad_token_id=151643)
    model.zero_grad(set_to_none=True)
    want, _ = loss_sum(model, batch)
    want.backward()
    g_want = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    row = step_graph.layout(batch, 151643, row_bucket=row_bucket, segment_bucket=4)
    inputs = {k: getattr(row, k) for k in ("input_ids", "position_ids", "shift_labels", "cu_seqlens")}
    model.zero_grad(set_to_none=True)
    got = step_graph.row_loss(model, inputs, row.max_length)
    got.backward()
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    for k, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, g_want[k], rtol=1e-4, atol=1e-6), k


"""Batching for SFT: padding-free packing (default) or padding to the longest sample, and the loss.

Padding-free packing (``--padding_free True``): the ``per_device_train_batch_size`` samples of a
micro-batch are concatenated into one row of shape ``[1, sum(lengths)]`` with ``position_ids``
restarting at 0 for each sample and no ``attention_mask``. transformers (≥ 4.54,
``masking_utils.find_packed_sequence_indices``) then builds a block-diagonal causal mask from the
position ids for sdpa/eager attention (only when no cache is passed: call the model with
``use_cache=False``, as :func:`loss_sum` does), so no token attends across samples. With
``steam_persona.trainer.accel``'s varlen attention (the default for training) :func:`loss_sum` passes the sample
boundaries instead and attention runs per sample, with no mask at all. This is ``DataCollatorWithFlattening``'s layout; we build it ourselves
because we also need the label positions for the loss below. The samples per optimizer step stay
exactly those of the padded layout (unlike LLaMA-Factory's ``packing``, which changes them).

The loss (:func:`loss_sum`) projects only the positions whose next token is learned onto the
vocabulary (``logits_to_keep`` with an index tensor): with a 49k–152k vocabulary the ``lm_head`` and
the cross-entropy over prompt positions are most of the waste on CPU. It returns a *sum* and the
token count, so gradient accumulation can normalise by the tokens of the whole optimizer step
(the same as HF Trainer's ``num_items_in_batch``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from steam_persona.trainer import accel
from steam_persona.trainer.encode import IGNORE_INDEX


def pack(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Concatenate samples into one row.

    Args:
        features: dicts with ``input_ids`` and ``labels`` (equal-length int lists).

    Returns:
        ``input_ids``, ``labels``, ``position_ids``: int64 tensors of shape ``[1, total_tokens]``.
        The first label of every sample is ``-100`` so no sample predicts the next one's first token.
    """
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for f in features:
        n = len(f["input_ids"])
        ids += f["input_ids"]
        labels += [IGNORE_INDEX] + list(f["labels"][1:])
        pos += range(n)
    t = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return {"input_ids": t(ids), "labels": t(labels), "position_ids": t(pos)}


def pad(features: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad samples to the longest one (HF ``DataCollatorForSeq2Seq`` layout).

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on padding): int64 tensors of shape
        ``[batch, longest]``. Labels are built from the lengths, never from ``pad_token_id``, so a
        pad that equals the eos token never masks a learned eos.
    """
    longest = max(len(f["input_ids"]) for f in features)
    ids, mask, labels = [], [], []
    for f in features:
        n = len(f["input_ids"])
        ids.append(list(f["input_ids"]) + [pad_token_id] * (longest - n))
        mask.append([1] * n + [0] * (longest - n))
        labels.append(list(f["labels"]) + [IGNORE_INDEX] * (longest - n))
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return {"input_ids": t(ids), "attention_mask": t(mask), "labels": t(labels)}


def collate(features: list[dict[str, list[int]]], padding_free: bool, pad_token_id: int) -> dict[str, torch.Tensor]:
    """:func:`pack` when ``padding_free`` (the default), else :func:`pad`."""
    return pack(features) if padding_free else pad(features, pad_token_id)


def loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over learned positions, and how many there are.

    For a packed row only the learned positions reach the ``lm_head``; for a padded batch the model
    computes every position's logits (what HF Trainer does) and the loss selects afterwards.

    Args:
        model: a causal LM (or PEFT wrapper) accepting ``logits_to_keep``.
        batch: from :func:`collate` (on the model's device).

    Returns:
        ``(loss_sum, n_tokens)``: a scalar float32 tensor (sum over tokens, natural log) and an int.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    target_mask = labels[:, 1:] != IGNORE_INDEX
    n = int(target_mask.sum())
    if model.training and accel.fused_loss_on(model):
        # steam_persona.trainer.accel's fused linear cross-entropy takes the hidden states, never the logits
        return model(**inputs, labels=labels, num_items_in_batch=1, use_cache=False).loss, n
    if labels.shape[0] == 1:
        keep = target_mask[0].nonzero().squeeze(-1)
        if "position_ids" in inputs and "attention_mask" not in inputs:  # a packed row: per-sample attention
            inputs.update(accel.varlen_kwargs(model, inputs["position_ids"]))
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits[0]
        targets = labels[0, keep + 1]
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1][target_mask]
        targets = labels[:, 1:][target_mask]
    return F.cross_entropy(logits.float(), targets, reduction="sum"), n

"""Counting rules for attention: ``scaled_dot_product_attention`` in every backend's ATen
form, and the fused fast paths of ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer``. ``op_rules`` registers them with ``register_op_rule``.

The convention (the same for every form, so that a fused kernel and the ops it replaces
count alike):

* The two matmuls of attention, ``Q K^T`` and ``softmax(.) V``, count ``B x heads x Lq
  x Lk x d`` MACs each (``d`` the head size of Q/K for the first, of V for the second).
  Grouped-query attention counts per *query* head (K/V heads are shared, not skipped).
  A mask or ``is_causal`` changes no count: the scores are counted dense.
* The scaling of the scores and their softmax are element counts, not MACs:
  ``B x heads x Lq x Lk`` elements each, under ``elementwise`` and ``activation``.
* The fast paths add what their parts would count: the Q/K/V input projection
  (``3 x B x L x E x E`` for self-attention) and the output projection (``B x L x E x E``)
  as MACs; the encoder layer also its two MLP linears (``B x L x E x F`` each), two
  layer norms (``norm``, input elements), the MLP activation (``activation``, ``B x L x
  F``) and the two residual additions (``elementwise``, ``B x L x E`` each). Biases are
  not counted, as for ``linear``.

Shapes are read from the arguments only, so the counts are the same on the ``meta``
device. Nested (variable-length) inputs are counted per sequence.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

Amounts = dict[str, int]


def _lengths(cumulative: Any) -> list[int]:
    """Sequence lengths from a cumulative-offsets tensor (``cum_seq_q``); needs values."""
    if cumulative.device.type == "meta":
        raise ValueError("variable-length attention cannot be counted on the meta device")
    offsets = [int(v) for v in cumulative.tolist()]
    return [b - a for a, b in itertools.pairwise(offsets)]


def _attention(score_rows: int, lk: int, d_qk: int, d_v: int) -> Amounts:
    """``score_rows`` = B x heads x Lq query rows, each scored against ``lk`` keys."""
    scores = score_rows * lk
    return {"macs": scores * (d_qk + d_v), "elementwise": scores, "activation": scores}


def _add(total: Amounts, more: Amounts) -> Amounts:
    for kind, amount in more.items():
        total[kind] = total.get(kind, 0) + amount
    return total


def _sdpa(args: Sequence[Any], out: Any) -> Amounts:
    """``(..., heads, L, d)`` layout: every ``_scaled_dot_product_*`` form and the public op."""
    q, k, v = args[0], args[1], args[2]
    if q.is_nested:
        return _nested_sdpa(q, k, v)
    return _attention(math.prod(q.shape[:-1]), k.shape[-2], q.shape[-1], v.shape[-1])


def _nested_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Amounts:
    total: Amounts = {}
    for qi, ki, vi in zip(q.unbind(), k.unbind(), v.unbind(), strict=True):
        _add(total, _attention(math.prod(qi.shape[:-1]), ki.shape[-2], qi.shape[-1], vi.shape[-1]))
    return total


def _varlen(q: Any, k: Any, v: Any, cum_q: Any, cum_k: Any) -> Amounts:
    """Packed variable-length forms: ``(total, heads, d)`` with cumulative offsets."""
    heads = q.shape[-2]
    total: Amounts = {}
    for lq, lk in zip(_lengths(cum_q), _lengths(cum_k), strict=True):
        _add(total, _attention(heads * lq, lk, q.shape[-1], v.shape[-1]))
    return total


def _blhd(cum_q_at: int, cum_k_at: int) -> Any:
    """``(B, L, heads, d)`` layout (``_flash_attention_forward``, ``_efficient_attention_forward``),
    or packed ``(total, heads, d)`` when the cumulative offsets at these positions are given."""

    def count(args: Sequence[Any], out: Any) -> Amounts:
        q, k, v = args[0], args[1], args[2]
        cum_q, cum_k = args[cum_q_at], args[cum_k_at]
        if cum_q is not None and cum_k is not None:
            return _varlen(q, k, v, cum_q, cum_k)
        return _attention(math.prod(q.shape[:-1]), k.shape[-3], q.shape[-1], v.shape[-1])

    return count


def _cudnn_forward(args: Sequence[Any], out: Any) -> Amounts:
    """``_cudnn_attention_forward``: ``(B, heads, L, d)``, or packed with offsets."""
    q, k, v, cum_q, cum_k = args[0], args[1], args[2], args[4], args[5]
    if q.dim() == 3 and cum_q is not None and cum_k is not None:
        return _varlen(q, k, v, cum_q, cum_k)
    return _sdpa(args, out)


def _tokens_and_lengths(x: torch.Tensor) -> list[tuple[int, int]]:
    """(batch rows, sequence length) per group of equal sequences: ``[(B, L)]`` for a dense
    ``(B, L, E)`` input, one ``(1, L_i)`` per sequence of a nested one."""
    if x.is_nested:
        return [(1, part.shape[-2]) for part in x.unbind()]
    return [(math.prod(x.shape[:-2]), x.shape[-2])]


def _native_mha(args: Sequence[Any], out: Any) -> Amounts:
    """``_native_multi_head_attention`` (``nn.MultiheadAttention``'s inference fast path):
    Q/K/V projections, the two attention matmuls and the output projection."""
    query, key, value, embed, heads = args[0], args[1], args[2], int(args[3]), int(args[4])
    total: Amounts = {}
    queries = _tokens_and_lengths(query)
    keys = _tokens_and_lengths(key)
    values = _tokens_and_lengths(value)
    for (rows, lq), (_, lk), (_, lv) in zip(queries, keys, values, strict=True):
        tokens_q = rows * lq
        projections = (tokens_q + rows * lk + rows * lv) * embed * embed + tokens_q * embed * embed
        _add(total, {"macs": projections})
        _add(total, _attention(tokens_q * heads, lk, embed // heads, embed // heads))
    return total


def _encoder_layer(args: Sequence[Any], out: Any) -> Amounts:
    """``_transformer_encoder_layer_fwd`` (``nn.TransformerEncoderLayer``'s inference fast
    path): self-attention as ``_native_mha``, the MLP's two linears, two layer norms, the
    MLP activation and the two residual additions."""
    src, embed, heads = args[0], int(args[1]), int(args[2])
    hidden = args[14].shape[0]  # ffn_weight_1: (F, E)
    total: Amounts = {}
    for rows, length in _tokens_and_lengths(src):
        tokens = rows * length
        _add(total, {
            "macs": 4 * tokens * embed * embed + 2 * tokens * embed * hidden,
            "norm": 2 * tokens * embed,
            "activation": tokens * hidden,
            "elementwise": 2 * tokens * embed,
        })
        _add(total, _attention(tokens * heads, length, embed // heads, embed // heads))
    return total


ATTENTION_RULES: tuple[tuple[str, Any, tuple[str, ...]], ...] = (
    ("macs", _sdpa, (
        "scaled_dot_product_attention", "_scaled_dot_product_attention_math",
        "_scaled_dot_product_attention_math_for_mps", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable",
    )),
    ("macs", _blhd(3, 4), ("_flash_attention_forward",)),
    ("macs", _blhd(4, 5), ("_efficient_attention_forward",)),
    ("macs", _cudnn_forward, ("_cudnn_attention_forward",)),
    ("macs", _native_mha, ("_native_multi_head_attention",)),
    ("macs", _encoder_layer, ("_transformer_encoder_layer_fwd",)),
)
"""(kind, count, op names): the rules ``op_rules`` registers. Each count returns amounts
by kind (MACs plus the element counts the fused op also does)."""


__all__ = ["ATTENTION_RULES"]

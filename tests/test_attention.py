"""Attention, fused kernels and transposed convolutions against hand-computed MACs.

Every expected count is written out from the shapes with the convention of the README
("Conventions: who counts what"): attention's two matmuls count ``B x heads x Lq x Lk x
d`` MACs each, the projections ``tokens x in x out``, a transposed convolution ``B x
C_in x (input positions) x C_out / groups x (kernel area)``. Each model takes an image
(a conv patch embedding makes the tokens), so the meta-device path of ``archbench
expect`` (``measure_model``, batch 1) is checked against the same formula.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archbench.expectations import measure_model
from archbench.profilers.compute import ComputeCount, UnclassifiedOp, count_compute
from archbench.profilers.op_rules import rule_for

R, P = 16, 4  # image side and patch size: (16 / 4)^2 = 16 tokens
TOKENS = (R // P) ** 2


def patch_macs(batch: int, embed: int) -> int:
    """Conv2d(3, E, P, stride=P): every output element takes 3 x P x P MACs."""
    return batch * embed * TOKENS * 3 * P * P


def mha_macs(batch: int, length: int, embed: int, heads: int) -> int:
    """Self-attention with E = embed, h heads, Lq = Lk = L, batch B."""
    d = embed // heads
    in_proj = 3 * batch * length * embed * embed
    scores = batch * heads * length * length * d  # Q K^T
    mixing = batch * heads * length * length * d  # softmax(.) V
    out_proj = batch * length * embed * embed
    return in_proj + scores + mixing + out_proj


def mlp_macs(batch: int, length: int, embed: int, hidden: int) -> int:
    return batch * length * embed * hidden + batch * length * hidden * embed


def meta_macs(model: nn.Module) -> int:
    """MACs of ``archbench expect``'s meta-device pass (batch 1, R x R)."""
    return int(measure_model(model, (R,))["by_resolution"][str(R)]["macs"])


class Patches(nn.Module):
    def __init__(self, embed: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed, P, stride=P)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, E)


@pytest.fixture
def fast_path_off() -> Iterator[None]:
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


# ----------------------------------------------------------------------------- nn.MultiheadAttention


class MhaBlock(nn.Module):
    """A pre-norm ViT block: LayerNorm, nn.MultiheadAttention, LayerNorm, MLP."""

    def __init__(self, embed: int = 32, heads: int = 4, hidden: int = 64, need_weights: bool = False) -> None:
        super().__init__()
        self.need_weights = need_weights
        self.patches = Patches(embed)
        self.norm1 = nn.LayerNorm(embed)
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(embed)
        self.mlp = nn.Sequential(nn.Linear(embed, hidden), nn.GELU(), nn.Linear(hidden, embed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patches(x)
        y = self.norm1(t)
        t = t + self.attn(y, y, y, need_weights=self.need_weights)[0]
        return t + self.mlp(self.norm2(t))


def check_mha_block(need_weights: bool, fused: bool) -> ComputeCount:
    B, E, h, F_ = 2, 32, 4, 64
    model = MhaBlock(E, h, F_, need_weights).eval()
    result = count_compute(model, torch.randn(B, 3, R, R))
    attention = mha_macs(B, TOKENS, E, h)
    assert result.macs == patch_macs(B, E) + attention + mlp_macs(B, TOKENS, E, F_)
    assert result.macs_by_module == {
        "patches.proj": patch_macs(B, E), "attn": attention,
        "mlp.0": B * TOKENS * E * F_, "mlp.2": B * TOKENS * F_ * E,
    }
    assert ("aten._native_multi_head_attention.default" in result.op_calls) == fused
    assert result.unclassified_ops == frozenset()
    # softmax over B x h x L x L scores, GELU over B x L x F
    assert result.activation == B * h * TOKENS * TOKENS + B * TOKENS * F_
    assert meta_macs(model) == patch_macs(1, E) + mha_macs(1, TOKENS, E, h) + mlp_macs(1, TOKENS, E, F_)
    return result


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_fast_path(need_weights: bool) -> None:
    result = check_mha_block(need_weights, fused=True)
    assert result.macs_by_op["aten._native_multi_head_attention.default"] == mha_macs(2, TOKENS, 32, 4)


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_without_fast_path(need_weights: bool, fast_path_off: None) -> None:
    result = check_mha_block(need_weights, fused=False)
    B, h, L = 2, 4, TOKENS
    if need_weights:  # the weights are materialised: two bmm's
        assert result.macs_by_op["aten.bmm.default"] == 2 * B * h * L * L * (32 // h)
    else:
        assert result.macs_by_op["aten.scaled_dot_product_attention.default"] == 2 * B * h * L * L * (32 // h)


# ----------------------------------------------------------------------------- nn.TransformerEncoderLayer


class EncoderBlock(nn.Module):
    def __init__(self, embed: int, heads: int, hidden: int, activation: str, norm_first: bool) -> None:
        super().__init__()
        self.patches = Patches(embed)
        self.layer = nn.TransformerEncoderLayer(embed, heads, hidden, dropout=0.0, activation=activation,
                                                batch_first=True, norm_first=norm_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.patches(x))


@pytest.mark.parametrize("fast_path", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize(("activation", "norm_first"), [("relu", False), ("gelu", True)])
def test_transformer_encoder_layer(activation: str, norm_first: bool, fast_path: bool) -> None:
    B, E, h, F_, L = 2, 32, 4, 64, TOKENS
    model = EncoderBlock(E, h, F_, activation, norm_first).eval()
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fast_path)
    try:
        result = count_compute(model, torch.randn(B, 3, R, R))
        meta = meta_macs(model)
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
    layer = mha_macs(B, L, E, h) + mlp_macs(B, L, E, F_)
    assert result.macs == patch_macs(B, E) + layer
    assert meta == patch_macs(1, E) + mha_macs(1, L, E, h) + mlp_macs(1, L, E, F_)
    assert ("aten._transformer_encoder_layer_fwd.default" in result.op_calls) == fast_path
    # the fused op counts what its parts count: two layer norms, the MLP activation and
    # softmax, two residual additions and the scaling of the scores
    assert result.norm == 2 * B * L * E
    assert result.activation == B * L * F_ + B * h * L * L
    assert result.elementwise == 2 * B * L * E + B * h * L * L
    assert result.unclassified_ops == frozenset()


class ViT(nn.Module):
    """ViT-B/16 (torchvision's vit_b_16 shapes) built from nn.TransformerEncoder."""

    def __init__(self, embed: int = 768, depth: int = 12, heads: int = 12, hidden: int = 3072,
                 patch: int = 16, image: int = 224, classes: int = 1000) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.proj = nn.Conv2d(3, embed, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, embed))
        self.pos = nn.Parameter(torch.zeros(1, tokens + 1, embed))
        layer = nn.TransformerEncoderLayer(embed, heads, hidden, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed)
        self.head = nn.Linear(embed, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t))[:, 0])


def test_vit_b_16_from_transformer_encoder() -> None:
    E, depth, h, F_, L = 768, 12, 12, 3072, 197  # 196 patches + the class token
    patch = 768 * 14 * 14 * (3 * 16 * 16)
    layer = mha_macs(1, L, E, h) + mlp_macs(1, L, E, F_)
    expected = patch + depth * layer + E * 1000
    assert expected == 17_563_828_224  # torchvision lists vit_b_16 at 17.56 GFLOPS (= GMACs)

    with torch.device("meta"):
        meta_model = ViT().eval()
    assert measure_model(meta_model, (224,))["by_resolution"]["224"]["macs"] == expected
    model = copy.deepcopy(meta_model).to_empty(device="cpu").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    result = count_compute(model, torch.randn(1, 3, 224, 224))
    assert result.macs == expected
    assert result.op_calls["aten._transformer_encoder_layer_fwd.default"] == depth
    assert result.unclassified_ops == frozenset()


# ----------------------------------------------------------------------------- F.scaled_dot_product_attention


class SdpaAttention(nn.Module):
    """Attention with separate Q and K/V projections; ``kv_heads < heads`` is grouped-query."""

    def __init__(self, embed: int, heads: int, kv_heads: int, mask: str | None, causal: bool) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.d = heads, kv_heads, embed // heads
        self.mask, self.causal = mask, causal
        self.patches = Patches(embed)
        self.q = nn.Linear(embed, embed)
        self.kv = nn.Linear(embed, 2 * kv_heads * self.d)
        self.out = nn.Linear(embed, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patches(x)
        B, L, E = t.shape
        q = self.q(t).view(B, L, self.heads, self.d).transpose(1, 2)
        k, v = self.kv(t).view(B, L, 2, self.kv_heads, self.d).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        mask = None
        if self.mask == "bool":
            mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        elif self.mask == "float":
            mask = torch.zeros(self.heads, L, L, device=x.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal,
                                           enable_gqa=self.kv_heads != self.heads)
        return self.out(o.transpose(1, 2).reshape(B, L, E))


def sdpa_model_macs(batch: int, length: int, embed: int, heads: int, kv_heads: int) -> int:
    d = embed // heads
    q_proj = batch * length * embed * embed
    kv_proj = batch * length * embed * (2 * kv_heads * d)
    attention = 2 * batch * heads * length * length * d  # per query head, K/V heads shared
    out_proj = batch * length * embed * embed
    return patch_macs(batch, embed) + q_proj + kv_proj + attention + out_proj


@pytest.mark.parametrize(
    ("heads", "kv_heads", "mask", "causal"),
    [(4, 4, None, False), (4, 4, "bool", False), (4, 4, "float", False), (4, 4, None, True),
     (8, 2, None, False), (8, 2, None, True)],
    ids=["plain", "bool_mask", "float_mask", "causal", "gqa", "gqa_causal"],
)
def test_scaled_dot_product_attention(heads: int, kv_heads: int, mask: str | None, causal: bool) -> None:
    B, E, L = 2, 32, TOKENS
    model = SdpaAttention(E, heads, kv_heads, mask, causal).eval()
    result = count_compute(model, torch.randn(B, 3, R, R))
    assert result.macs == sdpa_model_macs(B, L, E, heads, kv_heads)
    assert meta_macs(model) == sdpa_model_macs(1, L, E, heads, kv_heads)
    scores = B * heads * L * L
    assert result.macs_by_op["aten.scaled_dot_product_attention.default"] == 2 * scores * (E // heads)
    assert result.elements_by_op["aten.scaled_dot_product_attention.default"] == 2 * scores  # scale + softmax
    assert all(not op.may_hide_macs for op in result.unclassified)  # the bool mask's tril at most


class Call(nn.Module):
    """Calls one ATen op on (q, k, v) built on the input's device."""

    def __init__(self, op: Any, shapes: tuple[tuple[int, ...], ...], *extra: Any, **kwargs: Any) -> None:
        super().__init__()
        self.op, self.shapes, self.extra, self.kwargs = op, shapes, extra, kwargs

    def forward(self, x: torch.Tensor) -> Any:
        q, k, v = (torch.randn(s, device=x.device) for s in self.shapes)
        return self.op(q, k, v, *self.extra, **self.kwargs)


B_, H_, LQ, LK, D, DV = 2, 4, 5, 7, 8, 8
BHLD = ((B_, H_, LQ, D), (B_, H_, LK, D), (B_, H_, LK, DV))
BLHD = ((B_, LQ, H_, D), (B_, LK, H_, D), (B_, LK, H_, DV))
ATTENTION = B_ * H_ * LQ * LK * D + B_ * H_ * LQ * LK * DV  # Q K^T, then softmax(.) V
aten = torch.ops.aten


@pytest.mark.parametrize(
    ("device", "module"),
    [
        ("cpu", Call(aten._scaled_dot_product_attention_math.default, BHLD)),
        ("cpu", Call(aten._scaled_dot_product_attention_math.default,
                     ((B_, H_, LQ, D), (B_, 2, LK, D), (B_, 2, LK, DV)), enable_gqa=True)),
        ("cpu", Call(aten._scaled_dot_product_flash_attention_for_cpu.default, BHLD, 0.0, True)),
        ("cpu", Call(aten.scaled_dot_product_attention.default, BHLD, None, 0.0, True)),
        ("meta", Call(aten._scaled_dot_product_flash_attention.default, BHLD)),
        ("meta", Call(aten._scaled_dot_product_efficient_attention.default, BHLD, None, False, 0.0, True)),
        ("meta", Call(aten._scaled_dot_product_cudnn_attention.default, BHLD, None, False)),
        ("meta", Call(aten._scaled_dot_product_fused_attention_overrideable.default, BHLD)),
        ("meta", Call(aten._flash_attention_forward.default, BLHD, None, None, LQ, LK, 0.0, False, False)),
        ("meta", Call(aten._efficient_attention_forward.default, BLHD, None, None, None, None, None, 0.0, 0)),
    ],
    ids=["math", "math_gqa", "flash_cpu_causal", "sdpa_causal", "flash", "efficient", "cudnn",
         "overrideable", "flash_forward", "efficient_forward"],
)
def test_every_attention_backend_form(device: str, module: nn.Module) -> None:
    result = count_compute(module, torch.empty(1, device=device))
    assert result.macs == ATTENTION
    assert result.unclassified_ops == frozenset()


def test_cudnn_forward_and_packed_forms_by_their_rules() -> None:
    # _cudnn_attention_forward has no meta kernel: its rule is applied to the arguments
    q, k, v = (torch.empty(s, device="meta") for s in BHLD)
    kind, count = rule_for("_cudnn_attention_forward")  # type: ignore[misc]
    assert kind == "macs"
    assert count((q, k, v, None, None, None, LQ, LK, False), None)["macs"] == ATTENTION
    # packed variable-length input: sequences of 3 and 2 queries against 4 and 6 keys
    q, k, v = torch.empty(5, H_, D), torch.empty(10, H_, D), torch.empty(10, H_, DV)
    cum_q, cum_k = torch.tensor([0, 3, 5]), torch.tensor([0, 4, 10])
    _, flash = rule_for("_flash_attention_forward")  # type: ignore[misc]
    amounts = flash((q, k, v, cum_q, cum_k, 3, 6, 0.0, False, False), None)
    assert amounts["macs"] == H_ * (3 * 4 + 2 * 6) * (D + DV)


# ----------------------------------------------------------------------------- einsum, baddbmm, addbmm


class EinsumAttention(nn.Module):
    def __init__(self, embed: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.patches = Patches(embed)
        self.qkv = nn.Linear(embed, 3 * embed)
        self.out = nn.Linear(embed, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patches(x)
        B, L, E = t.shape
        q, k, v = self.qkv(t).view(B, L, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * (E // self.heads) ** -0.5
        o = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)
        return self.out(o.transpose(1, 2).reshape(B, L, E))


def test_einsum_attention() -> None:
    B, E, h = 2, 32, 4
    model = EinsumAttention(E, h).eval()
    result = count_compute(model, torch.randn(B, 3, R, R))
    assert result.macs == patch_macs(B, E) + mha_macs(B, TOKENS, E, h)
    assert meta_macs(model) == patch_macs(1, E) + mha_macs(1, TOKENS, E, h)
    assert result.op_calls["aten.einsum.default"] == 2
    assert result.macs_by_op["aten.bmm.default"] == 2 * B * h * TOKENS * TOKENS * (E // h)
    assert result.unclassified_ops == frozenset()


class BatchedProducts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.randn(3, 4, 5, device=x.device), torch.randn(3, 5, 6, device=x.device)
        c = torch.randn(4, 6, device=x.device)
        return torch.baddbmm(c, a, b).sum() + torch.addbmm(c, a, b).sum()


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_baddbmm_and_addbmm(device: str) -> None:
    result = count_compute(BatchedProducts(), torch.empty(1, device=device))
    # baddbmm: 3 products of (4x5)(5x6); addbmm: the same 3 products, summed into one (4, 6)
    assert result.macs_by_op == {"aten.baddbmm.default": 3 * 4 * 5 * 6, "aten.addbmm.default": 3 * 4 * 5 * 6}


# ----------------------------------------------------------------------------- transposed convolutions


class Decoder(nn.Module):
    """A stem, then transposed convolutions in 2d (grouped; grouped and dilated), 3d and 1d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.dilated = nn.ConvTranspose2d(6, 4, 3, padding=2, dilation=2, groups=2)
        self.volume = nn.ConvTranspose3d(1, 2, (2, 3, 3), stride=(1, 2, 2), dilation=(1, 1, 2))
        self.line = nn.ConvTranspose1d(10, 4, 3, stride=2, dilation=3, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dilated(self.up(self.stem(x)))
        y = self.volume(y.unsqueeze(1))
        return self.line(y.flatten(1, 2).flatten(2))


def transposed_out(size: int, k: int, s: int = 1, p: int = 0, d: int = 1, op: int = 0) -> int:
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def decoder_macs(batch: int) -> dict[str, int]:
    side = (R + 2 - 3) // 2 + 1  # stem: 8
    stem = batch * 8 * side * side * 3 * 9
    up = batch * 8 * side * side * (6 // 2) * 9  # each input element feeds C_out / groups x k x k
    side = transposed_out(side, 3, s=2, p=1, op=1)  # 16
    dilated = batch * 6 * side * side * (4 // 2) * 9
    side = transposed_out(side, 3, p=2, d=2)  # 16
    volume = batch * 1 * (4 * side * side) * 2 * (2 * 3 * 3)
    depth, h, w = transposed_out(4, 2), transposed_out(side, 3, s=2), transposed_out(side, 3, s=2, d=2)
    line = batch * 10 * (h * w) * (4 // 2) * 3  # (B, 2 x depth = 10, h x w)
    assert 2 * depth == 10
    return {"stem": stem, "up": up, "dilated": dilated, "volume": volume, "line": line}


def test_transposed_convolution_decoder() -> None:
    model = Decoder().eval()
    result = count_compute(model, torch.randn(2, 3, R, R))
    assert result.macs_by_module == decoder_macs(2)
    assert result.macs == sum(decoder_macs(2).values())
    assert meta_macs(model) == sum(decoder_macs(1).values())
    assert result.unclassified_ops == frozenset()


# ----------------------------------------------------------------------------- a fused op without a rule


def test_an_unregistered_fused_op_is_listed_with_its_modules() -> None:
    from archbench.profilers.op_rules import register_op_rule, unregister_op_rule

    rule = unregister_op_rule("_transformer_encoder_layer_fwd")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = count_compute(EncoderBlock(32, 4, 64, "relu", False).eval(), torch.randn(1, 3, R, R))
    finally:
        register_op_rule("_transformer_encoder_layer_fwd", *rule)
    assert result.macs == patch_macs(1, 32)  # all that is left: never a silent zero, though
    assert result.unclassified == (
        UnclassifiedOp("aten._transformer_encoder_layer_fwd.default", 1, ("layer",), True),
    )

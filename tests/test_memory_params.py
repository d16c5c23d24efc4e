"""Parameter counts and the activation-peak tracker."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from archbench.profilers.memory import estimate_activation_peak, profile_memory
from archbench.profilers.params import count_params
from tests.conftest import built


def test_activation_peak_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    mem = profile_memory(model, torch.zeros(2, 3, 8, 8))
    # conv1 out (2*8*8*8*4 B = 4096) is alive while ReLU writes its 4096 B: 8192; then conv1's
    # output is freed and conv2 writes 2048 B beside ReLU's 4096.
    assert mem.act_peak_bytes == 8192
    assert mem.input_bytes == 2 * 3 * 8 * 8 * 4
    assert mem.param_bytes == (3 * 8 * 9 + 8 + 8 * 4 + 4) * 4
    assert mem.buffer_bytes == 0


def test_views_share_storage_and_count_once() -> None:
    class SplitCat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = (x + 1).chunk(2, dim=1)  # 1 storage of 4096 B, two views
            return torch.cat([b, a], dim=1)  # a new 4096 B storage

    assert profile_memory(SplitCat(), torch.zeros(1, 16, 8, 8)).act_peak_bytes == 8192


@pytest.mark.parametrize("name", ["picodet_s", "shufflenetv2_x1_0", "picodet_yolov5lite"])
@pytest.mark.parametrize("resolution", [320, 416])
def test_activation_peak_identical_on_cpu_and_meta(name: str, resolution: int) -> None:
    model = built(name)
    shape = (1, 3, resolution, resolution)
    assert profile_memory(model, torch.zeros(shape)).act_peak_bytes == estimate_activation_peak(model, shape)
    assert next(model.parameters()).device.type == "cpu"  # the meta copy left the model alone


def test_shufflenet_peak_is_the_stem_by_hand() -> None:
    # Stem conv output (24 x 160 x 160 fp32) alive while BatchNorm writes its own: 2 x 2,457,600 B.
    assert profile_memory(built("shufflenetv2_x1_0"), torch.zeros(1, 3, 320, 320)).act_peak_bytes == 4_915_200


def test_shared_parameters_counted_once_and_trainable_split() -> None:
    shared = nn.Conv2d(4, 4, 1)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), shared, nn.Sequential(shared), nn.BatchNorm2d(4))
    model[0].weight.requires_grad_(False)
    count = count_params(model)
    assert count.total == (3 * 4 + 4) + (4 * 4 + 4) + 8
    assert count.trainable == count.total - 12
    assert count.by_part == {"0": 16, "1": 20, "2": 0, "3": 8}


def test_params_by_part_and_stage() -> None:
    count = count_params(built("picodet_s"))
    assert count.total == 992_715
    assert sum(count.by_part.values()) == count.total
    assert list(count.by_stage) == [
        "backbone.stem", "backbone.stage2", "backbone.stage3", "backbone.stage4", "neck", "head",
    ]
    assert count.by_stage["backbone.stem"] == 3 * 24 * 9 + 48
    assert sum(count.by_stage.values()) == count.total


def test_meta_presizing_takes_the_attention_fast_path_like_the_cpu() -> None:
    """The run's does-it-fit check (meta) sees the same peak as a CPU forward of an MHA block."""
    attention = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()

    class Block(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = x.flatten(2).transpose(1, 2)  # (B, 16, 32)
            return attention(tokens, tokens, tokens, need_weights=False)[0]

    shape = (1, 32, 4, 4)
    assert profile_memory(Block(), torch.randn(shape)).act_peak_bytes == estimate_activation_peak(Block(), shape)

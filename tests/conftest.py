"""Shared fixtures: models are built once per session where tests only read them."""

from __future__ import annotations

import functools

import pytest
import torch

import archbench


@functools.cache
def built(name: str, **overrides: object) -> torch.nn.Module:
    return archbench.create_model(name, **overrides)


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.manual_seed(0)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--benchmarks", action="store_true", help="collect tests/benchmarks (timing; never in CI)")


def pytest_ignore_collect(collection_path: object, config: pytest.Config) -> bool | None:
    # Benchmarks time things, so they run only on request (`nox -s benchmarks`), never in the default run.
    if "benchmarks" in getattr(collection_path, "parts", ()) and not config.getoption("--benchmarks"):
        return True
    return None

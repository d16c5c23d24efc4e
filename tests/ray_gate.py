"""A test-only builder for the Ray node-kill test (tests/test_ray.py): a tiny model whose build,
anywhere but on the meta device (a sweep's static cells build there), logs which processes
it runs under and then waits for a gate file. Ray workers import it by name
(``tests.ray_gate:build_gated``), so it lives in a module of its own."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

#: The longest a build waits for its gate: a test that went wrong must not hang its workers.
GATE_TIMEOUT_S = 90.0


def ancestors(pid: int) -> list[int]:
    """``pid`` and its parents up to init, from /proc (Linux)."""
    chain = []
    while pid > 1:
        chain.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])  # the field after the state: the parent's pid
    return chain


def build_gated(log: str, gate: str, tag: str, width: int = 8) -> nn.Module:
    """Append ``{"tag", "ancestors"}`` to ``log``, wait until ``gate`` exists, then build."""
    if torch.get_default_device().type != "meta":
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"tag": tag, "ancestors": ancestors(os.getpid())}) + "\n")
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())

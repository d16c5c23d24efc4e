"""The figures benchmarks measure, printed: as each is measured (visible with ``-s``) and
together at the end of the session, in an "archbench figures" section of the terminal
summary (always visible; the pytest-benchmark table does not show ``extra_info``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_FIGURES: list[str] = []


@pytest.fixture
def report_figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report_figure(line)``: print one line of measured figures and keep it for the summary."""

    def report(line: str) -> None:
        text = f"{request.node.name}: {line}"
        _FIGURES.append(text)
        print(f"\n[archbench figure] {text}", flush=True)

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("archbench figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)

"""The pytest plugin, as a user's project meets it: the example test file of the plugin's
docstring, run by pytest in a subprocess against an expectations file in tmp_path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import archbench.pytest_plugin as plugin
from archbench.pytest_plugin import ExpectationStore, assert_matches, assert_within

KEYS = ["shufflenetv2_x0_5 @ 64", "tinynet @ 128", "tinynet @ 64"]


def example_test_file() -> str:
    """The complete example test file from the plugin's docstring (so the docs run)."""
    doc = plugin.__doc__ or ""
    block = doc.split("archbench_expectations = tests/archbench_expectations.json``::\n", 1)[1]
    return textwrap.dedent(block.split("\nRecord the expectations", 1)[0]).strip() + "\n"


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -p loads the plugin without its entry point; autoload off, so an installed entry
    # point (and unrelated plugins) cannot register it a second time
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "archbench.pytest_plugin", str(project), "-q",
         "-p", "no:cacheprovider", *args],
        cwd=project, env=env, capture_output=True, text=True, check=False, timeout=300,
    )


def counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    summary = result.stdout.strip().splitlines()[-1]
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|error)", summary)}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user_project")
    (root / "pytest.ini").write_text("[pytest]\narchbench_expectations = tests/archbench_expectations.json\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_model_budget.py").write_text(example_test_file())
    return root


def test_user_project_records_checks_and_reports_changes(project: Path) -> None:
    path = project / "tests" / "archbench_expectations.json"
    assert not path.exists()

    # --archbench-update records the expectations (and passes); the file named on the command line
    # (relative to the working directory) is the ini's file
    recorded = run_pytest(project, "--archbench-update", "--archbench-expectations", "tests/archbench_expectations.json")
    assert counts(recorded) == {"passed": 4}, recorded.stdout
    assert "archbench: recorded 3 expectation(s)" in recorded.stdout
    data = json.loads(path.read_text())
    assert sorted(data) == KEYS
    assert data["tinynet @ 64"]["params"] == 3 * 16 * 9 + 16 * 9 + 2 * 2 * 16
    assert data["tinynet @ 64"]["macs"] == 32 * 32 * 16 * (27 + 9)
    assert set(data["shufflenetv2_x0_5 @ 64"]) == {"params", "macs", "act_peak_bytes"}
    snapshot = path.read_text()

    # a changed model (here: a changed file) fails with old and new values; read from the ini's path
    params, macs = data["tinynet @ 64"]["params"], data["tinynet @ 64"]["macs"]
    data["tinynet @ 64"].update(params=params + 10, macs=macs - 1000)
    path.write_text(json.dumps(data))
    changed = run_pytest(project)
    assert counts(changed) == {"failed": 1, "passed": 3}, changed.stdout
    assert f"tinynet @ 64: params {params + 10:,} -> {params:,} (" in changed.stdout
    assert f"tinynet @ 64: macs {macs - 1000:,} -> {macs:,} (+" in changed.stdout
    assert "rerun with `pytest --archbench-update`" in changed.stdout

    # --archbench-update rewrites the file, byte for byte as first recorded
    rewritten = run_pytest(project, "--archbench-update")
    assert counts(rewritten) == {"passed": 4}, rewritten.stdout
    assert "archbench: recorded 1 expectation(s)" in rewritten.stdout
    assert path.read_text() == snapshot


def test_importing_the_plugin_imports_no_torch() -> None:
    code = "import sys, archbench.pytest_plugin; print(sorted({'torch', 'pandas'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


ROW = {"variant": "net", "resolution": 64, "params": 1000, "macs": 50_000, "act_peak_bytes": 4096}


def test_assert_matches_plain_dicts() -> None:
    assert_matches(ROW, {"params": 1000, "macs": 50_000})
    assert_matches(ROW, {"macs": 50_400}, rel=0.01)
    with pytest.raises(AssertionError) as failure:
        assert_matches(ROW, {"params": 900, "macs": 50_400, "act_peak_bytes": 4096})
    message = str(failure.value)
    assert "net @ 64: params 900 -> 1,000 (+11.11%)" in message
    assert "net @ 64: macs 50,400 -> 50,000 (-0.79%)" in message
    assert "act_peak_bytes" not in message and "should match exactly" in message
    with pytest.raises(AssertionError, match="the row has no latency_ms_median"):
        assert_matches(ROW, {"latency_ms_median": 1.0})


def test_store_records_only_under_update(tmp_path: Path) -> None:
    path = tmp_path / "expect.json"
    checking = ExpectationStore(path)
    with pytest.raises(AssertionError, match=r"net: no expectations recorded in .*expect.json \(measured params=1,000"):
        assert_matches(ROW, checking["net"])
    assert not checking.save() and not path.exists()

    updating = ExpectationStore(path, update=True)
    assert_matches(ROW, updating["net"])
    assert_matches(ROW, updating["net.macs"], fields=["macs"])
    assert updating.save()
    assert json.loads(path.read_text()) == {"net": {"params": 1000, "macs": 50_000, "act_peak_bytes": 4096},
                                           "net.macs": {"macs": 50_000}}
    assert_matches(ROW, ExpectationStore(path)["net"])
    assert not ExpectationStore(path, update=True).save()  # nothing recorded: not rewritten


def test_assert_within_budgets() -> None:
    assert_within(ROW, params=1000, macs=(40_000, 60_000))
    assert_within(ROW, {"act_peak_bytes": (None, 5000)})
    with pytest.raises(AssertionError) as failure:
        assert_within(ROW, params=800, macs=(60_000, None))
    assert str(failure.value).splitlines() == [
        "net @ 64: params 1,000 exceeds the budget 800 (+25.00%)",
        "net @ 64: macs 50,000 is below the minimum 60,000",
    ]

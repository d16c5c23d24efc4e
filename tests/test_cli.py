"""The command line: listing, version, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from archbench import __version__
from archbench.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_families_and_ablations(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("esnet_m", "shufflenetv2_x1_0", "esnet_m.nose", "shufflenetv2_x1_0.ghost", "picodet_s"):
        assert name in out


def test_list_filters_by_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "esnet*")
    assert code == 0
    assert "esnet_l.dw" in out and "shufflenetv2_x1_0 " not in out and "picodet_s " not in out
    _, out, _ = run(capsys, "list", "picodet*")
    assert "picodet_yolov5lite" in out and "esnet_m " not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "nothing*"], "archbench: error: no variant matches 'nothing*'"),
        (["frobnicate"], "archbench: error: No such command 'frobnicate'"),
    ],
)
def test_errors_are_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_version_and_module_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "archbench", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"archbench, version {__version__}"


def test_listing_does_not_import_torch() -> None:
    code = "import sys; from archbench.cli import main; main(['list']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_compare_command_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from archbench.results import load, save

    example = Path(__file__).parent.parent / "reports" / "esnet-vs-shufflev2" / "results.json"
    assert main(["compare", str(example), str(example)]) == 0
    assert "0 exact changes" in capsys.readouterr().out
    changed = load(example)
    changed.records[0]["params"] += 1
    save(changed, tmp_path)
    assert main(["compare", str(example), str(tmp_path / "results.json"), "--format", "markdown"]) == 1
    out = capsys.readouterr().out
    assert "| `esnet_s` @ 320 px | `params` | 603,659 -> 603,660 |" in out
    assert main(["compare", str(example), str(example), "--format", "html"]) == 2
    assert capsys.readouterr().err == "archbench: error: unknown format 'html'; expected one of text, markdown\n"

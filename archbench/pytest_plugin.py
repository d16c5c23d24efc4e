"""archbench's pytest plugin: gate your own models' params, MACs and activation memory.

Installed with archbench, pytest loads it in every project (entry point ``pytest11``,
name ``archbench``). Where plugin autoloading is off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``),
load it with ``-p archbench``, or without the entry point with
``-p archbench.pytest_plugin`` (never that together with the autoloaded entry point:
pytest refuses to register one module under two names). Loading it imports neither
torch nor pandas; the fixtures do, when used.

Fixtures:

``archbench_profile``
    A callable ``profile(model_or_name, resolution=320, batch_size=1,
    metrics=("params", "macs", "memory"), name=None) -> dict``: one row of
    ``archbench.profile`` as a plain dict (``params``, ``macs``, ``flops``,
    ``act_peak_bytes``, ``param_bytes``, ...; ``variant`` is ``name``, the variant's
    name, or the module's class name). Any ``nn.Module`` taking ``(B, 3, H, W)`` or a
    registered variant name.
``archbench_expectations``
    Your expectations file as a mapping, key -> expected values. Keys are yours
    (``"tinynet @ 64"``); a key not in the file gives an empty entry, which
    ``assert_matches`` reports as not recorded yet. The file is
    ``--archbench-expectations PATH`` (relative to the working directory), else the
    ``archbench_expectations`` ini setting (relative to the ini file), else
    ``archbench_expectations.json`` in the rootdir.

Helpers (``from archbench.pytest_plugin import assert_matches, assert_within``):

``assert_matches(row, expected, rel=0.0, fields=None)``
    Every field of ``expected`` (or ``fields``) equals the row's, exactly, or within a
    relative tolerance ``rel``. Fails with one line per difference, old -> new:
    ``tinynet @ 64: macs 294,912 -> 311,296 (+5.56%)``.
``assert_within(row, limits=None, **limits)``
    Budgets: ``macs=600_000_000`` is an upper bound, ``params=(900_000, 1_000_000)`` a
    range. Fails with the value, the bound and how far over it is.

Snapshot updates: ``pytest --archbench-update`` makes ``assert_matches`` record the
measured values of every entry taken from ``archbench_expectations`` instead of failing
(fields: those already recorded, else ``params``, ``macs``, ``act_peak_bytes``); the file
is rewritten once, atomically, at the end of the session, keeping entries no test
touched. Review the diff and commit it. (Not under pytest-xdist: run updates serially.)

A complete example, ``tests/test_model_budget.py``, with ``pytest.ini``
(or ``[tool.pytest.ini_options]``) setting
``archbench_expectations = tests/archbench_expectations.json``::

    import pytest
    from torch import nn

    from archbench.pytest_plugin import assert_matches, assert_within


    class TinyNet(nn.Module):
        def __init__(self, width: int = 16) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            )

        def forward(self, x):
            return self.body(x)


    @pytest.mark.parametrize("resolution", [64, 128])
    def test_tinynet_is_unchanged(archbench_profile, archbench_expectations, resolution):
        row = archbench_profile(TinyNet(), resolution=resolution, name="tinynet")
        assert_matches(row, archbench_expectations[f"tinynet @ {resolution}"])


    def test_registered_variant_is_unchanged(archbench_profile, archbench_expectations):
        row = archbench_profile("shufflenetv2_x0_5", resolution=64)
        assert_matches(row, archbench_expectations["shufflenetv2_x0_5 @ 64"], rel=0.01)


    def test_tinynet_fits_its_budget(archbench_profile):
        row = archbench_profile(TinyNet(), resolution=320, name="tinynet")
        assert_within(row, params=1_000, macs=(1_000_000, 20_000_000), act_peak_bytes=4 * 2**20)

Record the expectations once with ``pytest --archbench-update``, commit
``tests/archbench_expectations.json``; from then on ``pytest`` fails when a model's
numbers change, and ``pytest --archbench-update`` accepts an intended change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from archbench.expectations import render_json
from archbench.render.units import exact_text, format_change, is_number, relative_change
from archbench.settings import DEFAULT_PROFILE_METRICS

DEFAULT_FILE = "archbench_expectations.json"
DEFAULT_FIELDS: tuple[str, ...] = ("params", "macs", "act_peak_bytes")
UPDATE_FLAG = "--archbench-update"

__all__ = ["DEFAULT_FIELDS", "ExpectationStore", "Expected", "assert_matches", "assert_within"]


# ----------------------------------------------------------------------------- the file


class Expected(dict[str, Any]):
    """Expected values of one key, remembering the file they came from, so that
    ``assert_matches`` can record new values under ``--archbench-update``."""

    def __init__(self, key: str, store: ExpectationStore, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.key = key
        self.store = store


class ExpectationStore(Mapping[str, Expected]):
    """A user's expectations file: ``{key: {field: value}}``, sorted, one value a line."""

    def __init__(self, path: Path, update: bool = False) -> None:
        self.path = Path(path)
        self.update = update
        self.data: dict[str, dict[str, Any]] = self._read()
        self.updated: list[str] = []  # keys whose values changed in this session

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise pytest.UsageError(f"archbench expectations {self.path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise pytest.UsageError(f"archbench expectations {self.path} must map keys to objects of values")
        return data

    def __getitem__(self, key: str) -> Expected:
        return Expected(key, self, self.data.get(key, {}))

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def record(self, key: str, values: Mapping[str, Any]) -> None:
        """Store new values for ``key`` (written by ``save``)."""
        merged = {**self.data.get(key, {}), **values}
        if merged != self.data.get(key) and key not in self.updated:
            self.updated.append(key)
        self.data[key] = merged

    def save(self) -> bool:
        """Write the file if anything was recorded; whether it was written."""
        if not self.updated:
            return False
        from archbench.results import write_atomic

        write_atomic(self.path, render_json(self.data) + "\n")
        return True


# ----------------------------------------------------------------------------- helpers


def _label(row: Mapping[str, Any], expected: Mapping[str, Any] | None = None) -> str:
    if isinstance(expected, Expected):
        return expected.key
    name, resolution = row.get("variant", "model"), row.get("resolution")
    return f"{name} @ {resolution}" if resolution is not None else str(name)


def _text(value: Any) -> str:
    """Ints in full (``1,000``), floats to 6 significant figures, anything else as its repr."""
    if isinstance(value, float):
        return f"{value:,.6g}"
    return exact_text(value) if is_number(value) else repr(value)


def _agrees(old: Any, new: Any, rel: float) -> bool:
    if rel and is_number(old) and is_number(new):
        return math.isclose(new, old, rel_tol=rel, abs_tol=0.0)
    return bool(old == new)


def assert_matches(
    row: Mapping[str, Any],
    expected: Mapping[str, Any],
    rel: float = 0.0,
    fields: Sequence[str] | None = None,
) -> None:
    """Assert that ``row`` has the ``expected`` values: exactly, or within ``rel``
    (relative, e.g. ``0.01`` for 1%).

    Args:
        row: What ``archbench_profile`` returned (any mapping of field -> value).
        expected: Field -> value; an entry of ``archbench_expectations`` records the
            row's values instead under ``--archbench-update``.
        rel: Relative tolerance for numbers; 0 means exact.
        fields: The fields to compare (default: those in ``expected``; for an entry not
            recorded yet, ``params``, ``macs`` and ``act_peak_bytes`` where the row has them).

    Raises:
        AssertionError: One line per differing field, ``label: field old -> new (+x.xx%)``.
    """
    __tracebackhide__ = True
    label = _label(row, expected)
    wanted = list(fields or expected or [f for f in DEFAULT_FIELDS if f in row])
    absent = [f for f in wanted if f not in row]
    if absent:
        raise AssertionError(
            f"{label}: the row has no {', '.join(absent)} (profile with the metrics that produce them)"
        )
    if isinstance(expected, Expected) and expected.store.update:
        measured = {f: row[f] for f in wanted}
        expected.store.record(expected.key, measured)
        expected.update(measured)
        return
    store = expected.store if isinstance(expected, Expected) else None
    hint = f"; if intended, rerun with `pytest {UPDATE_FLAG}`" if store is not None else ""
    if not expected:
        where = f" in {store.path}" if store is not None else ""
        values = ", ".join(f"{f}={_text(row[f])}" for f in wanted)
        raise AssertionError(
            f"{label}: no expectations recorded{where} (measured {values}); "
            f"record them with `pytest {UPDATE_FLAG}`"
        )
    lines = []
    for field in wanted:
        if field not in expected:
            lines.append(f"{label}: {field} not in expectations (measured {_text(row[field])})")
        elif not _agrees(expected[field], row[field], rel):
            lines.append(f"{label}: {field} {format_change(expected[field], row[field])}")
    if lines:
        tolerance = f"within {rel:.2%}" if rel else "exactly"
        raise AssertionError(
            f"expected -> measured, should match {tolerance}{hint}:\n" + "\n".join(lines)
        )


def assert_within(row: Mapping[str, Any], limits: Mapping[str, Any] | None = None, **more: Any) -> None:
    """Assert budgets: ``assert_within(row, macs=600e6, params=(9e5, 1e6))``.

    A number is an upper bound; a ``(low, high)`` pair a range (either may be None).
    Budgets are never rewritten by ``--archbench-update``.

    Raises:
        AssertionError: One line per field out of bounds, with the value and the bound.
    """
    __tracebackhide__ = True
    label = _label(row)
    lines = []
    for field, limit in {**(limits or {}), **more}.items():
        if field not in row:
            lines.append(f"{label}: the row has no {field}")
            continue
        value = row[field]
        low, high = limit if isinstance(limit, tuple | list) else (None, limit)
        if high is not None and value > high:
            lines.append(f"{label}: {field} {_text(value)} exceeds the budget {_text(high)} "
                         f"({relative_change(high, value)})")
        if low is not None and value < low:
            lines.append(f"{label}: {field} {_text(value)} is below the minimum {_text(low)}")
    if lines:
        raise AssertionError("\n".join(lines))


# ----------------------------------------------------------------------------- pytest hooks

_STORE_KEY = pytest.StashKey[ExpectationStore]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("archbench", "archbench model expectations")
    group.addoption(
        "--archbench-expectations", metavar="PATH", default=None,
        help=f"expectations file of the archbench_expectations fixture [default: ini "
             f"archbench_expectations, else {DEFAULT_FILE} in the rootdir]",
    )
    group.addoption(
        UPDATE_FLAG, action="store_true", default=False,
        help="record measured values in the expectations file instead of failing assert_matches",
    )
    parser.addini("archbench_expectations", help="archbench expectations file, relative to the ini file", default="")


def expectations_path(config: pytest.Config) -> Path:
    """The file ``archbench_expectations`` reads: option, then ini, then the default."""
    option = config.getoption("--archbench-expectations")
    if option:
        return Path(config.invocation_params.dir, option)
    ini = str(config.getini("archbench_expectations") or "")
    base = config.inipath.parent if config.inipath else config.rootpath
    return Path(base, ini or DEFAULT_FILE)


@pytest.fixture(scope="session")
def archbench_expectations(pytestconfig: pytest.Config) -> ExpectationStore:
    """The user's expectations file, key -> expected values (see the module docstring)."""
    store = pytestconfig.stash.get(_STORE_KEY, None)
    if store is None:
        store = ExpectationStore(expectations_path(pytestconfig), update=pytestconfig.getoption(UPDATE_FLAG))
        pytestconfig.stash[_STORE_KEY] = store
    return store


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str | bytes) else value


@pytest.fixture
def archbench_profile() -> Callable[..., dict[str, Any]]:
    """``profile(model_or_name, resolution=320, batch_size=1, metrics=(...), name=None) -> dict``."""

    def profile(
        model_or_name: Any,
        resolution: int = 320,
        batch_size: int = 1,
        metrics: Sequence[str] = DEFAULT_PROFILE_METRICS,
        name: str | None = None,
    ) -> dict[str, Any]:
        from archbench.profiling import profile as run_profile  # imports torch, on first use

        if isinstance(model_or_name, list | tuple):
            raise TypeError("archbench_profile measures one model; call it once per model")
        frame = run_profile(model_or_name, resolutions=(resolution,), batch_size=batch_size, metrics=metrics)
        row = {key: _plain(value) for key, value in frame.to_dict("records")[0].items()}
        if name is not None:
            row["variant"] = name
        return row

    return profile


def pytest_sessionfinish(session: pytest.Session) -> None:
    store = session.config.stash.get(_STORE_KEY, None)
    if store is not None and store.update:
        store.save()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    store = config.stash.get(_STORE_KEY, None)
    if store is not None and store.update and store.updated:
        terminalreporter.write_line(
            f"archbench: recorded {len(store.updated)} expectation(s) in {store.path}: "
            + ", ".join(store.updated)
        )

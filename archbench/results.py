"""results.json: the source of truth of a run, and its versioned schema.

Schema ``archbench.results`` version 2 (one JSON object)::

    schema            "archbench.results"
    schema_version    2 (version 1 files, which have no ``layers``, are read too)
    run_id            folder name under reports/, e.g. "20261127-211500"
    created           ISO 8601 UTC time the run started
    complete          false while running or after an interruption
    command           the command line that produced it
    archbench_version
    settings          variants, resolutions, batch_size, device, forms, metrics, counters,
                      threads, repeats, baseline, latency_config
    environment       cpu_model, cpu_cores, torch, onednn, python, os, threads, ...;
                      ``ceilings`` (peak_gflops, bandwidth_gbps, method, ...) when
                      layers were measured
    conventions       column -> what it counts and how
    variants          name -> {family, kind, base, builder, args}: what each variant is
    records           one per variant x resolution x batch_size x device x form:
                      variant, resolution, batch_size, device, form (deployment form,
                      "eager" when absent),
                      status ("ok" | "failed" | "skipped"), reason (why, or ""),
                      then every metric column of ``archbench.profile``
    latency_processes per-process latency rows when repeats > 1
    layers            per-layer rows when the ``layers`` metric ran (version 2): one per
                      layer of each cell, in execution order: variant, resolution,
                      form, then ``archbench.profile_layers``'s columns: module, type,
                      kind, part, stage, calls, latency_ms (own time, median), macs,
                      bytes_moved, and the roofline columns derived from them and
                      the environment's ceilings (latency_share, flops, intensity,
                      attained_gflops, attained_gbps, roof_gflops, pct_of_roof, bound),
                      and ``signature`` (what the row does, without its name: the key
                      of ``archbench.predict``'s latency tables)

Renderers and ``archbench compare`` read this file and never measure again;
``load`` checks the type of every field they read first (a malformed file is one
``ArchbenchError`` naming the file, the record and the field).
Files are written atomically (temporary file + rename), so a kill never leaves
half-written JSON.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from archbench.errors import ArchbenchError
from archbench.metrics import column, column_order, is_done

SCHEMA = "archbench.results"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
STATUSES = ("ok", "failed", "skipped")
KEY_COLUMNS = ("variant", "resolution", "batch_size", "device", "form")
DEFAULT_FORM = "eager"
_LAYER_KEY = ("variant", "resolution", "form")
_REQUIRED = ("schema", "schema_version", "run_id", "settings", "environment", "records")


@dataclass
class RunResult:
    """A run in memory; ``records`` grow as cells finish."""

    run_id: str
    created: str
    command: str
    archbench_version: str
    settings: dict[str, Any]
    environment: dict[str, Any]
    conventions: dict[str, str] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    latency_processes: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "created": self.created,
            "complete": self.complete,
            "command": self.command,
            "archbench_version": self.archbench_version,
            "settings": self.settings,
            "environment": self.environment,
            "conventions": self.conventions,
            "variants": self.variants,
            "records": [_clean(r) for r in self.records],
            "latency_processes": self.latency_processes,
            "layers": [_clean(row) for row in self.layers],
        }

    def frame(self) -> pd.DataFrame:
        """The records as a DataFrame, in record order; key columns first, then the
        measured ones in metric-catalog order (undeclared columns last)."""
        head = [*KEY_COLUMNS, "status", "reason"]
        if not self.records:
            return pd.DataFrame(columns=head)
        frame = pd.DataFrame(self.records)
        present = [c for c in head if c in frame.columns]
        return frame[present + column_order(c for c in frame.columns if c not in head)]

    def record(self, variant: str, resolution: int, form: str | None = None) -> dict[str, Any] | None:
        """The record of one cell; ``form`` defaults to the run's first form."""
        form = form or self.forms[0]
        for r in self.records:
            if r["variant"] == variant and r["resolution"] == resolution and r.get("form", DEFAULT_FORM) == form:
                return r
        return None

    @property
    def forms(self) -> list[str]:
        return list(self.settings.get("forms") or [DEFAULT_FORM])

    def cell_done(self, record: dict[str, Any]) -> bool:
        """Whether a record needs no more measuring (its latency too, if the run asks for it)."""
        return is_done(record, self.settings.get("metrics", ()))

    def progress(self) -> tuple[int, int]:
        """(cells complete, cells in the run)."""
        total = len(self.settings.get("variants", ())) * len(self.settings.get("resolutions", ())) * len(self.forms)
        return sum(self.cell_done(r) for r in self.records), total

    def layer_frame(self, variant: str, resolution: int, form: str | None = None) -> pd.DataFrame:
        """One cell's per-layer rows as ``profile_layers`` returns them (empty if none); ``attrs``
        hold the cell's whole-forward median, the sum of layer medians and the run's ceilings."""
        form = form or self.forms[0]
        rows = [r for r in self.layers
                if (r["variant"], r["resolution"], r.get("form", DEFAULT_FORM)) == (variant, resolution, form)]
        frame = pd.DataFrame([{k: v for k, v in r.items() if k not in _LAYER_KEY} for r in rows])
        record = self.record(variant, resolution, form) or {}
        frame.attrs.update({"variant": variant, "resolution": resolution, "form": form,
                            "forward_ms": record.get("layers_forward_ms"), "layers_sum_ms": record.get("layers_sum_ms"),
                            "ceilings": self.environment.get("ceilings", {})})
        return frame

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok"]


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe values: NaN/inf become null, numpy scalars become Python numbers."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if hasattr(value, "item") and not isinstance(value, list | dict | str):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(result: RunResult, folder: Path) -> None:
    """Write results.json and results.csv into ``folder``."""
    write_atomic(folder / "results.json", json.dumps(result.to_json(), indent=1, sort_keys=False) + "\n")
    write_atomic(folder / "results.csv", result.frame().to_csv(index=False))


def _fail(path: Path, why: str) -> ArchbenchError:
    return ArchbenchError(f"{path}: {why}")


# -- validation on load: the type of every field the code reads ------------------------


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def misshapen_field(data: dict[str, Any], *, objects: Iterable[str] = (), lists: Iterable[str] = ()) -> str | None:
    """What is wrong with the first of ``objects`` that is present but not a JSON object, or of
    ``lists`` that is present but not a list (for a file's load check); None if nothing."""
    for names, kind, word in ((objects, dict, "an object"), (lists, list, "a list")):
        for name in names:
            if name in data and not isinstance(data[name], kind):
                return f"{name} must be {word}, got {_show(data[name])}"
    return None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _text_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


_POSITIVE = (_positive_int, "a positive integer")
_STRING = (lambda v: isinstance(v, str), "a string")
# The ``RunSettings`` fields a results file records and what each must be (when present);
# for lists, what each item must be.
_SETTINGS_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": _POSITIVE, "device": _STRING, "threads": _POSITIVE, "repeats": _POSITIVE,
    "baseline": (_text_or_null, "a string or null"), "latency_config": (lambda v: isinstance(v, dict), "an object"),
}
_SETTINGS_LISTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "variants": _STRING, "resolutions": _POSITIVE, "metrics": _STRING, "counters": _STRING, "forms": _STRING,
}
_KEY_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "variant": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"), "resolution": _POSITIVE,
    "batch_size": _POSITIVE, "device": _STRING, "form": _STRING, "reason": _STRING,
}


def _settings_problem(settings: dict[str, Any]) -> str | None:
    for name, (ok, what) in _SETTINGS_TYPES.items():
        if name in settings and not ok(settings[name]):
            return f"{name} must be {what}, got {_show(settings[name])}"
    for name, (ok, what) in _SETTINGS_LISTS.items():
        values = settings.get(name, [])
        if not isinstance(values, list):
            return f"{name} must be a list, got {_show(values)}"
        for i, value in enumerate(values):
            if not ok(value):
                return f"{name}[{i}] must be {what}, got {_show(value)}"
    return None


def _record_label(i: int, record: dict[str, Any]) -> str:
    """``record 3 (esnet_s @ 320)``, or ``record 3`` when the cell is not readable."""
    variant, resolution = record.get("variant"), record.get("resolution")
    if isinstance(variant, str) and variant and _positive_int(resolution):
        return f"record {i} ({variant} @ {resolution})"
    return f"record {i}"


_LAYER_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "variant": _KEY_TYPES["variant"], "resolution": _POSITIVE, "form": _STRING, "module": _STRING,
    "kind": _STRING, "latency_ms": (_number_or_null, "a number or null"),
    "macs": (_number_or_null, "a number or null"), "bytes_moved": (_number_or_null, "a number or null"),
}


def _layer_problem(row: Any) -> str | None:
    """What is wrong with one per-layer row, or None (the fields renderers read)."""
    if not isinstance(row, dict):
        return f"must be an object, got {_show(row)}"
    for name, (ok, what) in _LAYER_TYPES.items():
        if name not in row:
            return f"lacks {name}"
        if not ok(row[name]):
            return f"has field {name!r} = {_show(row[name])}; expected {what}"
    return None


def _record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with one record, or None: key fields, status, and every metric column
    the catalog declares (numbers or null; text or null for its ``text`` columns).
    Undeclared columns (a user's own) may hold any JSON value."""
    absent = [k for k in (*KEY_COLUMNS, "status") if k not in record]
    if absent:
        return f"lacks {', '.join(absent)}"
    for name, (ok, what) in _KEY_TYPES.items():
        if not ok(record[name]):
            return f"has field {name!r} = {_show(record[name])}; expected {what}"
    if record["status"] not in STATUSES:
        return f"has status {_show(record['status'])}; expected one of {', '.join(STATUSES)}"
    for name, value in record.items():
        if name in _KEY_TYPES or name == "status":
            continue
        kind = _declared_kind(name)
        if kind == "text" and not _text_or_null(value):
            return f"has field {name!r} = {_show(value)}; expected a string or null (text column)"
        if kind == "number" and not _number_or_null(value):
            return f"has field {name!r} = {_show(value)}; expected a number or null (metric column)"
    return None


@functools.lru_cache(maxsize=4096)
def _declared_kind(name: str) -> str | None:
    """``text`` or ``number`` for a column the catalog declares; None for a user's own."""
    declared = column(name)
    if declared is None:
        return None
    return "text" if declared.scale == "text" else "number"


def load(path: Path | str) -> RunResult:
    """Read and validate a results.json; any problem is one clear ``ArchbenchError``.

    Every field the code reads is type-checked here, so renderers, ``compare`` and
    ``--resume`` never meet a value they cannot use: the key fields and status of each
    record, every metric column the catalog declares (numbers or null; strings or null
    for text columns; undeclared columns may hold anything) and the recorded settings.
    The error names the file, the record (index, variant @ resolution) and the field.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON (line {exc.lineno}: {exc.msg}); is the file complete?") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise _fail(path, "not an archbench results file (no \"schema\": \"archbench.results\")")
    if data.get("schema_version") not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise _fail(path, f"schema version {data.get('schema_version')!r} is not supported (this archbench reads {readable})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(path, f"missing {', '.join(missing)}")
    records = data["records"]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise _fail(path, "records must be a list of objects")
    problem = misshapen_field(data, objects=("settings", "environment", "conventions", "variants"),
                              lists=("latency_processes", "layers"))
    if problem:
        raise _fail(path, problem)
    for i, row in enumerate(data.get("layers", [])):
        problem = _layer_problem(row)
        if problem:
            raise _fail(path, f"layers[{i}] {problem}")
    if not isinstance(data.get("complete", False), bool):
        raise _fail(path, f"complete must be true or false, got {_show(data['complete'])}")
    for name, info in data.get("variants", {}).items():
        if not isinstance(info, dict) or not isinstance(info.get("args", {}), dict):
            raise _fail(path, f"variants.{name} must be an object with an \"args\" object")
    problem = _settings_problem(data["settings"])
    if problem:
        raise _fail(path, f"settings.{problem}")
    for i, record in enumerate(records):
        record.setdefault("form", DEFAULT_FORM)
        record.setdefault("reason", "")
        problem = _record_problem(record)
        if problem:
            raise _fail(path, f"{_record_label(i, record)} {problem}")
    return RunResult(
        run_id=str(data["run_id"]),
        created=str(data.get("created", "")),
        command=str(data.get("command", "")),
        archbench_version=str(data.get("archbench_version", "")),
        settings=dict(data["settings"]),
        environment=dict(data["environment"]),
        conventions=dict(data.get("conventions", {})),
        variants=dict(data.get("variants", {})),
        records=[dict(r) for r in records],
        latency_processes=list(data.get("latency_processes", [])),
        layers=[dict(row) for row in data.get("layers", [])],
        complete=bool(data.get("complete", False)),
    )

"""What a run measures, validated once, where it is constructed.

``RunSettings`` is the one description of a sweep: ``archbench run`` builds it from
the command line, ``archbench.profile`` from its arguments, ``--resume`` from a
results file and the repeat worker from its job. Construction checks every field
(bad input is one ``ArchbenchError``), so nothing downstream checks again. The
defaults every entry point shares live here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from archbench.errors import ArchbenchError
from archbench.metrics import COUNTERS, METRICS
from archbench.profilers.latency import LatencyConfig

DEFAULT_RESOLUTIONS: tuple[int, ...] = (320, 416, 640)
#: ``archbench.profile`` and the pytest plugin measure the static metrics unless asked ...
DEFAULT_PROFILE_METRICS: tuple[str, ...] = ("params", "macs", "memory")
#: ... ``archbench run`` measures these; per-layer profiles (``layers``) are asked for.
DEFAULT_RUN_METRICS: tuple[str, ...] = ("params", "macs", "memory", "latency")
DEFAULT_FORMS: tuple[str, ...] = ("eager",)
#: What measured models see (``archbench.inputs``); runs recorded before inputs were a
#: setting timed seeded noise, which is what their settings mean when ``input`` is absent.
DEFAULT_INPUT = "image"
INPUT_BEFORE_SETTING = "random"
DEFAULT_VARIANTS = "shufflenetv2_x1_0,esnet_m,esnet_m.nose,esnet_m.dw,shufflenetv2_x1_0.se,shufflenetv2_x1_0.ghost"
DEFAULT_BASELINE = "shufflenetv2_x1_0"


def check_choices(values: Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``values`` as a tuple, or one error naming those not in ``allowed``."""
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ArchbenchError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return tuple(values)


def check_count(value: object, label: str) -> int:
    """A positive integer (``bool`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArchbenchError(f"{label} must be an integer of at least 1, got {value!r}")
    return value


def check_resolution_value(resolution: object) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ArchbenchError(f"resolution must be a positive integer, got {resolution!r}")
    return resolution


def _as_tuple(values: Sequence[Any] | str) -> tuple[Any, ...]:
    return (values,) if isinstance(values, str | int) else tuple(values)


@dataclass(frozen=True)
class RunSettings:
    """Variants x resolutions x forms at one batch size, device and thread count.

    Every field is checked when the object is made; a bad one raises ``ArchbenchError``.
    ``device`` is normalised (``"cuda"`` stays ``"cuda"``, ``"cuda:1"`` is checked against
    the devices present). ``tf32`` lets float32 convolutions and matmuls on a GPU use TF32
    (``archbench.devices.precision_policy``); off, float32 means float32. ``keep_artifacts``
    keeps the files forms convert through (ncnn's) in the run folder's ``artifacts/``.
    """

    variants: tuple[str, ...]
    resolutions: tuple[int, ...] = DEFAULT_RESOLUTIONS
    batch_size: int = 1
    device: str = "cpu"
    metrics: tuple[str, ...] = DEFAULT_RUN_METRICS
    counters: tuple[str, ...] = ()
    threads: int = 1
    repeats: int = 1
    baseline: str | None = None
    forms: tuple[str, ...] = DEFAULT_FORMS
    input: str = DEFAULT_INPUT
    tf32: bool = False
    keep_artifacts: bool = False
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def __post_init__(self) -> None:
        from archbench.devices import check_device
        from archbench.forms import check_forms
        from archbench.inputs import check_input_kind

        set_ = object.__setattr__  # frozen: normalise in place, once
        variants = _as_tuple(self.variants)
        if not variants or not all(isinstance(v, str) and v for v in variants):
            raise ArchbenchError("nothing to measure: name at least one variant")
        set_(self, "variants", variants)
        set_(self, "resolutions", tuple(check_resolution_value(r) for r in _as_tuple(self.resolutions)))
        if not self.resolutions:
            raise ArchbenchError("no resolution given")
        for label, name in (("batch size", "batch_size"), ("threads", "threads"), ("repeats", "repeats")):
            check_count(getattr(self, name), label)
        set_(self, "metrics", check_choices(_as_tuple(self.metrics), METRICS, "metric"))
        set_(self, "counters", check_choices(_as_tuple(self.counters), COUNTERS, "counter"))
        set_(self, "forms", check_forms(_as_tuple(self.forms)))
        set_(self, "device", str(check_device(self.device)))
        check_input_kind(self.input)
        for flag in ("tf32", "keep_artifacts"):
            if not isinstance(getattr(self, flag), bool):
                raise ArchbenchError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.baseline is not None and self.baseline not in self.variants:
            raise ArchbenchError(f"baseline {self.baseline!r} is not among the selected variants")
        if not isinstance(self.latency, LatencyConfig):
            raise ArchbenchError(f"latency settings must be a LatencyConfig, got {type(self.latency).__name__}")

    @property
    def wants_latency(self) -> bool:
        return "latency" in self.metrics

    @property
    def wants_layers(self) -> bool:
        return "layers" in self.metrics

    @property
    def times_models(self) -> bool:
        """Whether any phase times the models (their BatchNorm statistics are then calibrated)."""
        return self.wants_latency or self.wants_layers

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency_config"] = data.pop("latency")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        """The settings a results.json (or a worker job) recorded, checked like any others."""
        try:
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in data.items() if k in known and k != "latency"}
            values.setdefault("input", INPUT_BEFORE_SETTING)
            for key in ("variants", "resolutions", "metrics", "counters", "forms"):
                if key in values:
                    values[key] = tuple(values[key])
            latency = LatencyConfig(**data.get("latency_config", {}))
        except (TypeError, ValueError) as exc:
            raise ArchbenchError(f"cannot resume: the recorded settings are not usable ({exc})") from None
        try:
            return cls(**values, latency=latency)
        except ArchbenchError as exc:
            raise ArchbenchError(f"cannot resume: the recorded settings are not usable ({exc})") from None

"""Per-layer latency profile on the roofline: where a forward's time goes, and why.

(About 490 lines: the timing wrappers, the byte capture and the profile walk one module
tree together; split further they would pass their private state between modules.)

``profile_layers(target, resolution)`` returns one row per leaf module in execution order
(repeated calls of one module summed per forward, ``calls`` says how many), plus one
``<module>.(own)`` row for each non-leaf module that does work of its own between its
children (concat, chunk/split, channel shuffle, residual adds, ...): the data movement
inside module forwards is not a leaf module, and would otherwise be lost.

**Method: in-situ timing with exclusive ("own") times.** Every module except pure
containers (``nn.Sequential`` and subclasses that keep its forward) has its ``forward``
wrapped, for the hooked forwards only, in a closure that reads ``perf_counter_ns`` around
it (on CUDA after a ``synchronize``); module hooks are not used because any hook sends
``Module.__call__`` down a slow path that costs ~10 us per module. A module's own time in one forward is its inclusive time minus its
hooked children's inclusive times, summed over its calls; a container's own time goes to
its nearest hooked ancestor. The own times of one forward therefore add up to the whole
forward exactly (the wrappers' overhead included, in the module it falls in).
``latency_ms`` is each row's median over the hooked forwards. The same call times plain
forwards (no wrappers) alternating with the hooked ones, so drift hits both alike:
``attrs["forward_ms"]`` is their median, ``attrs["layers_sum_ms"]`` the sum of the row
medians, and ``attrs["reconciliation"]`` their ratio (the wrappers' overhead and the difference
between a sum of medians and a median of sums are what separate it from 1).

**Bytes (compulsory traffic).** ``bytes_moved`` of a leaf module is what it must read and
write at least once: its input tensors (each storage once) + its output tensors + its
floating-point parameters and buffers (BatchNorm's ``num_batches_tracked`` is not read at
inference), at the tensors' own dtype (the run's dtype). An ``(own)`` row's bytes are the
inputs plus outputs of the ATen ops that run directly in that module, views excluded
(a ``view``/``chunk`` moves nothing; the copy a ``reshape`` makes of a channel shuffle's
transposed view, and a ``cat``, read and write their elements). Caches and re-reads are not modelled.

**Signature.** ``signature`` names the work a row does, without its name: for a leaf, its
type, its configuration (``extra_repr``: channels, kernel, stride, groups, bias, ...) and its
input and output shapes (``Conv2d(24, 48, kernel_size=(1, 1), stride=(1, 1), bias=False):
f32[1,24,80,80] -> f32[1,48,80,80]``); for an ``(own)`` row, the module's type and the ATen
ops that run directly in it, each with its input and output shapes. Repeated calls are joined
with `` | ``. Two rows with one signature do the same work (``archbench.predict`` keys its
latency table by it); it is computed in the byte-capture pass, so it holds on the meta device too.

**Roofline.** ``flops = 2 x macs`` (archbench's convention), ``intensity = flops /
bytes_moved``, ``roof_gflops = min(peak, intensity x bandwidth)`` from
``archbench.machine_ceilings``; ``bound`` is ``compute`` where ``intensity x bandwidth >=
peak``, else ``memory``. ``pct_of_roof`` is attained / roof: for memory-bound rows that is
``attained_gbps / bandwidth``, which also gives a meaning to rows without FLOPs
(normalisation, activations, data movement).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from archbench.errors import ArchbenchError
from archbench.profilers.layer_views import (
    KIND_SE,
    LAYER_COLUMNS,
    add_roofline,
    is_container,
    is_se,
    leaf_kind,
    own_kind,
)
from archbench.profilers.speed import bracket_ms, speed_probe

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from archbench.profilers.compute import ComputeCount

OWN_SUFFIX = "(own)"
LAYER_FORMS = ("eager", "fused", "channels_last")
DEFAULT_SAMPLES = 40
DEFAULT_BLOCK = 1
DEFAULT_MAX_SECONDS = 6.0
DEFAULT_MIN_SAMPLES = 10


# -- the measurement ------------------------------------------------------------------
@dataclass
class _Node:
    name: str  # row name: the module's dotted name, or "<name>.(own)" / "(own)" for non-leaves
    module: nn.Module
    leaf: bool
    order: int = -1  # first exit, in hooked-module order
    calls: int = 0
    samples_ns: list[int] = field(default_factory=list)
    current_ns: int = 0


def _row_name(name: str, leaf: bool) -> str:
    if leaf:
        return name
    return f"{name}.{OWN_SUFFIX}" if name else OWN_SUFFIX


def _tensors(value: Any) -> list[torch.Tensor]:
    import torch
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _data_ptr(t: torch.Tensor) -> int:
    """Where the tensor's storage starts; for tensor subclasses that have no storage of their
    own (``untyped_storage`` raises), the tensor's identity, so each still counts once."""
    try:
        return int(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return id(t)


def _storage_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the tensors' elements, each storage once (views of one tensor count once)."""
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        key = (_data_ptr(t), int(t.storage_offset()))
        seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
    return sum(seen.values())


def _state_bytes(module: nn.Module) -> int:
    tensors = [p for p in module.parameters()] + [b for b in module.buffers() if b.is_floating_point()]
    return sum(t.numel() * t.element_size() for t in tensors)


class _Hooks:
    """Timing hooks on every non-container module; one forward's own times per node."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.nodes: list[_Node] = []
        self._handles: list[tuple[nn.Module, bool, Any]] = []
        self._stack: list[list[Any]] = []  # [node, start_ns, children_ns]
        self._exits = 0
        self._sync: Callable[[], None] = (lambda: None)
        if device.type == "cuda":
            import torch

            self._sync = lambda: torch.cuda.synchronize(device)
        seen: set[int] = set()
        for name, module in model.named_modules():
            if id(module) in seen or (name and is_container(module)):
                continue
            seen.add(id(module))
            leaf = next(iter(module.children()), None) is None
            self.nodes.append(_Node(_row_name(name, leaf), module, leaf))

    def attach(self) -> None:
        """Wrap each module's ``forward`` (an instance attribute, restored by ``detach``).

        Module hooks would do, but any hook sends ``Module.__call__`` down its slow path
        (about 10 us per module here, a fifth of a small detector's forward); a wrapped
        ``forward`` costs two clock reads and a closure call.
        """
        for node in self.nodes:
            module = node.module
            had_own = "forward" in module.__dict__
            self._handles.append((module, had_own, module.__dict__.get("forward")))
            object.__setattr__(module, "forward", self._wrap(node, module.forward))

    def detach(self) -> None:
        for module, had_own, previous in reversed(self._handles):
            if had_own:
                object.__setattr__(module, "forward", previous)
            else:
                del module.__dict__["forward"]
        self._handles.clear()
        self._stack.clear()

    def _wrap(self, node: _Node, forward: Callable[..., Any]) -> Callable[..., Any]:
        stack, sync, clock = self._stack, self._sync, time.perf_counter_ns

        def timed_forward(*args: Any, **kwargs: Any) -> Any:
            sync()
            entry: list[Any] = [node, 0, 0]
            stack.append(entry)
            entry[1] = clock()
            output = forward(*args, **kwargs)
            sync()
            end = clock()
            stack.pop()
            inclusive = end - entry[1]
            node.current_ns += inclusive - entry[2]
            node.calls += 1
            if node.order < 0:
                node.order = self._exits
                self._exits += 1
            if stack:
                stack[-1][2] += inclusive
            return output

        return timed_forward

    def end_forward(self) -> None:
        for node in self.nodes:
            if node.calls:
                node.samples_ns.append(node.current_ns)
            node.current_ns = 0


def _shapes(tensors: Sequence[torch.Tensor]) -> str:
    """``f32[1,24,80,80],f32[24]``: dtype and shape of each tensor (the signature's notation)."""
    return ",".join(f"{_DTYPES.get(str(t.dtype), str(t.dtype).removeprefix('torch.'))}[{','.join(map(str, t.shape))}]"
                    for t in tensors)


_DTYPES = {"torch.float32": "f32", "torch.float16": "f16", "torch.bfloat16": "bf16", "torch.float64": "f64",
           "torch.int64": "i64", "torch.int32": "i32", "torch.bool": "b8", "torch.uint8": "u8", "torch.int8": "i8"}


def _capture_bytes(model: nn.Module, x: torch.Tensor, nodes: Sequence[_Node],
                   signatures: dict[str, str] | None = None) -> dict[str, int]:
    """Compulsory bytes per row of one forward (see the module docstring); fills ``signatures``
    (row -> signature), when given, in the same pass."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    totals: dict[str, int] = {}
    stack: list[str] = []
    leaves = {node.name for node in nodes if node.leaf}
    calls: dict[str, list[str]] = {}  # row -> one entry per call (leaves) or per op (own rows)
    own_ops: dict[str, list[str]] = {}  # own row -> the ops of its current call

    class _OpBytes(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            row = stack[-1] if stack else OWN_SUFFIX
            if row in leaves:
                return out
            inputs = _tensors((args, kwargs or {}))
            outputs = _tensors(out)
            if signatures is not None:
                own_ops.setdefault(row, []).append(f"{func}({_shapes(inputs)}) -> {_shapes(outputs)}")
            if getattr(func, "is_view", False):
                # a view moves nothing, but a view-or-copy op (reshape of a transposed tensor,
                # as in a channel shuffle) may have copied: count the outputs that alias no input
                pointers = {_data_ptr(t) for t in inputs}
                outputs = [t for t in outputs if _data_ptr(t) not in pointers]
                if not outputs:
                    return out
            totals[row] = totals.get(row, 0) + _storage_bytes(inputs) + _storage_bytes(outputs)
            return out

    handles = []
    for node in nodes:
        module, row = node.module, node.name

        def pre(_m: nn.Module, _args: Any, row: str = row) -> None:
            stack.append(row)

        def post(m: nn.Module, args: Any, output: Any, row: str = row) -> None:
            stack.pop()
            if row in leaves:
                state = _state_bytes(m)
                totals[row] = totals.get(row, 0) + _storage_bytes(_tensors(args)) + _storage_bytes(_tensors(output)) + state
                if signatures is not None:
                    calls.setdefault(row, []).append(
                        f"{type(m).__name__}({m.extra_repr()}): {_shapes(_tensors(args))} -> {_shapes(_tensors(output))}")
            elif signatures is not None:
                calls.setdefault(row, []).append("; ".join(own_ops.pop(row, [])))

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with torch.inference_mode(), _OpBytes():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if signatures is not None:
        types = {node.name: type(node.module).__name__ for node in nodes}
        for row, entries in calls.items():
            text = " | ".join(entries)
            signatures[row] = text if row in leaves else f"{types[row]} {OWN_SUFFIX}: {text}"
    return totals


def _prepare(target: Any, resolution: int, input_kind: str, calibrate: bool | None,
             registry: Any) -> tuple[nn.Module, str, bool]:
    from archbench.cells import check_resolution, input_multiple
    from archbench.factory import create_model
    from archbench.inputs import (
        CALIBRATION_RESOLUTION,
        calibrate_batchnorm,
        calibration_batches,
        check_input_kind,
    )

    check_input_kind(input_kind)
    if isinstance(target, str):
        model, name, registered = create_model(target, registry=registry), target, True
    else:
        model, name, registered = target, type(target).__name__, False
    check_resolution(model, name, resolution)
    if calibrate if calibrate is not None else registered:
        model = copy.deepcopy(model) if not registered else model
        multiple = input_multiple(model)  # as the runner does: one resolution for every cell
        calibrate_batchnorm(model, calibration_batches(input_kind, -(-CALIBRATION_RESOLUTION // multiple) * multiple))
    return model, name, registered


def _apply_form(model: nn.Module, x: torch.Tensor, form: str, registered: bool) -> tuple[nn.Module, torch.Tensor]:
    import torch

    if form not in LAYER_FORMS:
        raise ArchbenchError(f"per-layer profiles need a form that keeps the modules: {', '.join(LAYER_FORMS)}; "
                             f"got {form!r}")
    if form == "eager":
        return model, x
    model = model if registered else copy.deepcopy(model)
    if form == "fused":
        from archbench.folding import fold_conv_bn

        fold_conv_bn(model)
        return model, x
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model, x.contiguous(memory_format=torch.channels_last)


def work_by_row(model: nn.Module, nodes: Sequence[_Node], compute: ComputeCount
                ) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """MACs and elements per category of each row (hooked node, by its name): every module's
    own counts go to itself if it is hooked, else to its nearest hooked ancestor."""
    from archbench.profilers.op_rules import CATEGORIES

    module_names = {id(m): n for n, m in model.named_modules()}
    hooked = {module_names[id(node.module)]: node.name for node in nodes}

    def owner(module_name: str) -> str | None:
        parts = module_name.split(".") if module_name else []
        while True:
            candidate = ".".join(parts)
            if candidate in hooked:
                return hooked[candidate]
            if not parts:
                return None
            parts.pop()

    macs_by_row: dict[str, int] = {}
    elements_by_row: dict[str, dict[str, int]] = {}
    for module_name, macs in compute.by_module("macs").items():
        row = owner(module_name)
        if row is not None:
            macs_by_row[row] = macs_by_row.get(row, 0) + macs
    for category in CATEGORIES:
        for module_name, count in compute.by_module(category).items():
            row = owner(module_name)
            if row is not None:
                row_elements = elements_by_row.setdefault(row, {})
                row_elements[category] = row_elements.get(category, 0) + count
    return macs_by_row, elements_by_row


def profile_layers(target: Any, resolution: int = 320, *, batch_size: int = 1, device: str = "cpu",
                   threads: int = 1, form: str = "eager", input: str = "image", calibrate: bool | None = None,
                   samples: int = DEFAULT_SAMPLES, max_seconds: float = DEFAULT_MAX_SECONDS,
                   min_samples: int = DEFAULT_MIN_SAMPLES, ceilings: Any = None, registry: Any = None) -> pd.DataFrame:
    """Per-layer latency, work, traffic and roofline position of one model at one resolution.

    Args:
        target: A registered variant name (built seeded, BatchNorm calibrated on ``input``)
            or an ``nn.Module`` taking ``(B, 3, H, W)`` (measured as given unless ``calibrate``).
        resolution: Input side in pixels.
        batch_size: Batch size.
        device: ``cpu`` or ``cuda[:N]``.
        threads: CPU intra-op threads.
        form: ``eager``, ``fused`` (conv-BN folded) or ``channels_last``.
        input: What the model sees: ``image``, ``random`` or ``zeros``.
        calibrate: Calibrate BatchNorm statistics (default: only for registered names).
        samples: Hooked forwards (and as many plain ones) to take medians over.
        max_seconds: Stop sampling after this long, once ``min_samples`` of each are in.
        min_samples: Hooked (and plain) forwards taken whatever ``max_seconds`` says.
        ceilings: ``Ceilings`` to use (default ``machine_ceilings(device, threads)``, cached).
        registry: The registry names resolve in (default: the built-in one plus plugins).

    Returns:
        A DataFrame with ``LAYER_COLUMNS``, rows in execution order; ``attrs`` holds
        ``forward_ms``, ``layers_sum_ms``, ``reconciliation``, ``hooked_forward_ms``,
        ``ceilings``, ``method``, ``other_load`` (cores other processes kept busy while
        timing, NaN where unknown), ``probe_ms`` (the speed probe just before and after the
        timing, ``archbench.profilers.speed``; NaN off the CPU) and ``contended`` (as in
        ``latency_noise``: then stalls inflate whole forwards more than per-layer medians,
        and the ratio drops), ``phase_s`` (seconds spent building, calibrating and reading the ceilings, counting MACs and bytes,
        timing) and the settings.
    """
    import pandas as pd
    import torch

    from archbench.devices import check_device, on_device
    from archbench.environment import usable_cpus
    from archbench.inputs import sample_input
    from archbench.machine import machine_ceilings
    from archbench.profilers.compute import count_compute
    from archbench.profilers.latency import (
        LatencyConfig,
        ProcStatLoadProbe,
        cpu_threads,
        load_on_measurement,
    )
    from archbench.profilers.params import model_parts, model_stages

    if samples < 3 or min_samples < 3:
        raise ArchbenchError(f"samples and min_samples must be at least 3, got {samples} and {min_samples}")
    min_samples = min(min_samples, samples)
    parsed = check_device(device)
    # everything runs at the measured thread count: multi-threaded work on a shared machine
    # (building, calibrating, counting) can be 10x slower than at 1 thread
    with cpu_threads(threads):
        clock = time.perf_counter
        phase_s: dict[str, float] = {}
        t0 = clock()
        model, name, registered = _prepare(target, resolution, input, calibrate, registry)
        x = sample_input(batch_size, resolution, kind=input)
        model, x = _apply_form(model, x, form, registered)
        training = {id(m): m.training for m in model.modules()}
        model.eval()
        if ceilings is None:
            ceilings = machine_ceilings(str(parsed), threads)

        # static: MACs and element counts per innermost module, bytes per row (on the CPU)
        phase_s["prepare"] = clock() - t0
        t0 = clock()
        compute = count_compute(model, x)
        hooks = _Hooks(model, parsed)
        signatures: dict[str, str] = {}
        bytes_by_row = _capture_bytes(model, x, hooks.nodes, signatures)
        phase_s["count"] = clock() - t0
        t0 = clock()

        try:
            with on_device(parsed), cpu_threads(threads), torch.inference_mode():
                model.to(parsed)
                xd = x.to(parsed)

                def plain() -> int:
                    if parsed.type == "cuda":
                        torch.cuda.synchronize(parsed)
                    t0 = time.perf_counter_ns()
                    model(xd)
                    if parsed.type == "cuda":
                        torch.cuda.synchronize(parsed)
                    return time.perf_counter_ns() - t0

                for _ in range(3):
                    plain()
                plain_ns: list[int] = []
                hooked_ns: list[int] = []
                speed = speed_probe().read_ms if parsed.type == "cpu" else None
                speed_before = speed() if speed is not None else math.nan
                probe = ProcStatLoadProbe()
                probe.start()
                started = time.perf_counter()
                while len(plain_ns) < samples:
                    block = min(DEFAULT_BLOCK, samples - len(plain_ns))
                    hooks.attach()
                    try:
                        for _ in range(block):
                            hooked_ns.append(plain())
                            hooks.end_forward()
                    finally:
                        hooks.detach()
                    plain_ns.extend(plain() for _ in range(block))
                    if time.perf_counter() - started > max_seconds and len(plain_ns) >= min_samples:
                        break
                other_load = probe.stop()
                probe_ms = bracket_ms([speed_before, speed() if speed is not None else math.nan])
        finally:
            model.to("cpu")
            for m in model.modules():
                m.training = training.get(id(m), m.training)

        phase_s["timing"] = clock() - t0
    # parts and stages by module identity
    part_of: dict[int, str] = {}
    stage_of: dict[int, str] = {}
    for part_name, part in model_parts(model).items():
        part_of.update({id(m): part_name for m in part.modules()})
    for stage_name, stage in model_stages(model).items():
        stage_of.update({id(m): stage_name for m in stage.modules()})
    se_ids = {id(m) for se in model.modules() if is_se(se) for m in se.modules()}

    macs_by_row, elements_by_row = work_by_row(model, hooks.nodes, compute)

    records = []
    for node in sorted((n for n in hooks.nodes if n.samples_ns), key=lambda n: n.order):
        if not node.leaf and max(node.samples_ns) == 0:
            continue
        latency_ms = statistics.median(node.samples_ns) / 1e6
        macs = macs_by_row.get(node.name, 0)
        elements = {**elements_by_row.get(node.name, {}), "macs": macs}
        if node.leaf:
            kind = KIND_SE if id(node.module) in se_ids else leaf_kind(node.module)
        else:
            kind = KIND_SE if id(node.module) in se_ids else own_kind(elements)
        records.append({
            "module": node.name,
            "type": type(node.module).__name__ if node.leaf else f"{type(node.module).__name__} {OWN_SUFFIX}",
            "kind": kind,
            "part": part_of.get(id(node.module), "(model)"),
            "stage": stage_of.get(id(node.module), "(model)"),
            "calls": node.calls // len(node.samples_ns),
            "latency_ms": latency_ms,
            "macs": macs,
            "bytes_moved": bytes_by_row.get(node.name, 0),
            "signature": signatures.get(node.name, ""),
        })
    df = pd.DataFrame.from_records(records, columns=[c for c in LAYER_COLUMNS if c in records[0]] if records else None)
    df = add_roofline(df, ceilings.peak_gflops, ceilings.bandwidth_gbps)
    forward_ms = statistics.median(plain_ns) / 1e6
    layers_sum_ms = float(df["latency_ms"].sum())
    df.attrs.update({
        "variant": name,
        "resolution": resolution,
        "batch_size": batch_size,
        "device": str(parsed),
        "threads": threads,
        "form": form,
        "input": input,
        "dtype": str(x.dtype).removeprefix("torch."),
        "forward_ms": forward_ms,
        "hooked_forward_ms": statistics.median(hooked_ns) / 1e6,
        "layers_sum_ms": layers_sum_ms,
        "reconciliation": layers_sum_ms / forward_ms,
        "samples": len(plain_ns),
        "other_load": other_load,
        "probe_ms": probe_ms,
        "contended": parsed.type == "cpu" and load_on_measurement(other_load, threads, len(usable_cpus()))
        > LatencyConfig().max_other_load,
        "phase_s": phase_s,
        "ceilings": ceilings.as_dict(),
        "peak_gflops": ceilings.peak_gflops,
        "bandwidth_gbps": ceilings.bandwidth_gbps,
        "method": METHOD,
        "bytes_convention": BYTES_CONVENTION,
    })
    return df


METHOD = (
    "in-situ: each non-container module's forward wrapped with perf_counter_ns reads; own time = "
    "inclusive - hooked children (containers' time goes to their hooked ancestor; non-leaf work such as "
    "concat/chunk/shuffle is the '<module>.(own)' row); per-row median over the hooked forwards; forward_ms "
    "is the median of plain forwards alternating with them"
)
BYTES_CONVENTION = (
    "compulsory traffic at the tensors' dtype: inputs (each storage once) + outputs + floating-point "
    "parameters and buffers of a leaf; for '(own)' rows, inputs + outputs of the ATen ops run directly in "
    "the module, except views that alias their input"
)


__all__ = ["LAYER_FORMS", "OWN_SUFFIX", "profile_layers"]

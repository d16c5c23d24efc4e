"""Exact compute counts from one forward pass, read where ATen ops are dispatched.

``count_compute`` runs one forward pass under ``torch.inference_mode()`` inside a
``TorchDispatchMode`` and counts every op it sees by its rule in ``op_rules``: MACs of
convolutions and matrix products (the headline), and elements per category
(``CATEGORIES``: norm, activation, elementwise, pool, data_movement) for the rest.

Under inference mode on the CPU the mode sees ops *before* their
CompositeImplicitAutograd decomposition (``aten.conv2d``, ``aten.linear``,
``aten.batch_norm``, ``aten.reshape``), and nothing of what runs inside them, so each
convolution is counted exactly once, whichever level it reaches the mode at. An op
without a rule that has such a decomposition is decomposed under the mode, so that its
parts are counted (``einsum`` becomes ``bmm``); any other op without a rule is listed
in ``unclassified_ops``, never silently dropped (``register_op_rule`` gives it one), and
``unclassified`` says how often it ran, in which modules, and whether it may hide MACs
(it took a floating-point tensor of rank 2 or more and is not in ``MAC_FREE_OPS``).
``archbench.profile`` warns about those (``UncountedOpWarning``, ``warn_uncounted``).

Each op is attributed to the innermost module running it, by its ``named_modules``
name ("backbone.stage2.0.expand.conv"; "" for the root's own forward). The module
stack comes from global module hooks that live only for the pass: nothing is
registered on the model, and the model's state is unchanged.

Third-party counters for cross-checks (fvcore, thop) are in ``crosscheck``.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from archbench.profilers.op_rules import CATEGORIES, MAC_FREE_OPS, op_name, rule_for

Inputs = torch.Tensor | tuple[torch.Tensor, ...]
"""One input tensor, or a tuple of positional inputs."""
Kernel = Callable[[torch._ops.OpOverload, Sequence[Any], Mapping[str, Any]], Any]
"""What computes an op the counter has counted: ``kernel(func, args, kwargs) -> output``."""


# ----------------------------------------------------------------------------- results


class UncountedOpWarning(UserWarning):
    """An op without a counting rule, which may hide MACs, ran in a profiled model."""


@dataclass(frozen=True)
class UnclassifiedOp:
    """An op the counter saw but could not count (it counted 0 for it).

    Attributes:
        op: The ATen op, as in ``unclassified_ops`` (``"aten.cumsum.default"``).
        calls: How many times it ran in the pass.
        modules: The innermost modules it ran in, in first-use order ("" is the root's
            own forward).
        may_hide_macs: Some call took a floating-point tensor of rank 2 or more and the
            op is not known to be MAC-free (``op_rules.MAC_FREE_OPS``).
    """

    op: str
    calls: int
    modules: tuple[str, ...]
    may_hide_macs: bool

    def describe(self) -> str:
        """``"aten.cumsum.default: 2 calls in body.1, head"`` (the root is "(model)")."""
        where = ", ".join(name or "(model)" for name in self.modules)
        plural = "call" if self.calls == 1 else "calls"
        return f"{self.op}: {self.calls} {plural} in {where}"

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "calls": self.calls, "modules": list(self.modules),
                "may_hide_macs": self.may_hide_macs}


def unclassified_to_text(ops: Iterable[UnclassifiedOp]) -> str:
    """The ``unclassified_calls`` column: the ops as a JSON list of objects (``op``,
    ``calls``, ``modules``, ``may_hide_macs``), in first-use order."""
    return json.dumps([op.as_dict() for op in ops], separators=(",", ":"))


def unclassified_from_text(text: str | None) -> list[UnclassifiedOp]:
    """The ops of an ``unclassified_calls`` column (empty for none or an empty value)."""
    if not text or not isinstance(text, str):
        return []
    return [
        UnclassifiedOp(str(item["op"]), int(item["calls"]), tuple(item["modules"]),
                       bool(item["may_hide_macs"]))
        for item in json.loads(text)
    ]


def warn_uncounted(ops: Iterable[UnclassifiedOp], where: str = "", stacklevel: int = 2) -> None:
    """One ``UncountedOpWarning`` per op that may hide MACs (``may_hide_macs``)."""
    for op in ops:
        if op.may_hide_macs:
            warnings.warn(
                f"{where}{op.describe()}: no counting rule, so its MACs (if any) are not in "
                f"'macs'; count it with archbench.profilers.op_rules.register_op_rule",
                UncountedOpWarning, stacklevel=stacklevel + 1,
            )


@dataclass(frozen=True)
class ComputeCount:
    """What one forward pass computes. Treat the dicts as read-only.

    Attributes:
        macs: Multiply-accumulates of convolutions and matrix products (headline).
        macs_by_module: Innermost module name -> MACs ("" for the root's own forward).
        norm: Normalization input elements (BatchNorm, LayerNorm, GroupNorm, vector norms).
        activation: Activation input elements (ReLU, Hardswish, Hardsigmoid, SiLU, ...).
        elementwise: Output elements of arithmetic (add, mul incl. SE scaling, div, ...).
        pool: Pooling input elements (max/avg/adaptive pools, ``mean`` reductions).
        data_movement: Output elements of cat, copies (shuffle reshapes) and upsampling.
        elements_by_module: Category -> innermost module name -> elements.
        macs_by_op: ATen op (``"aten.conv2d.default"``) -> MACs.
        elements_by_op: ATen op -> elements counted for it.
        op_calls: ATen op -> calls seen, including ops decomposed and views (0 cost).
        unclassified_ops: Ops seen that have no rule and no decomposition (counted as 0).
        input_shapes: Shapes of the inputs the pass ran on.
        macs_by_module_op: Innermost module name -> ATen op -> MACs.
        unclassified: The ``unclassified_ops`` with their calls and modules, in first-use order.
    """

    macs: int
    macs_by_module: dict[str, int]
    norm: int
    activation: int
    elementwise: int
    pool: int
    data_movement: int
    elements_by_module: dict[str, dict[str, int]]
    macs_by_op: dict[str, int]
    elements_by_op: dict[str, int]
    op_calls: dict[str, int]
    unclassified_ops: frozenset[str]
    input_shapes: tuple[tuple[int, ...], ...]
    macs_by_module_op: dict[str, dict[str, int]]
    unclassified: tuple[UnclassifiedOp, ...]

    def elements(self, category: str) -> int:
        """Total elements of one category of ``CATEGORIES``."""
        _check_metric(category, allow_macs=False)
        return int(getattr(self, category))

    def by_module(self, metric: str = "macs", depth: int | None = None) -> dict[str, int]:
        """``"macs"`` or a category per module, optionally summed to a name depth.

        Args:
            metric: ``"macs"`` or one of ``CATEGORIES``.
            depth: Keep this many leading name components (see ``aggregate_by_prefix``).
        """
        _check_metric(metric, allow_macs=True)
        per_module = self.macs_by_module if metric == "macs" else self.elements_by_module[metric]
        return dict(per_module) if depth is None else aggregate_by_prefix(per_module, depth)

    def rows(self, depth: int | None = None) -> list[dict[str, str | int]]:
        """Tidy rows, one per module (or name prefix at ``depth``), in first-use order.

        Columns: ``module``, ``macs`` and ``<category>_elems`` for each category.
        """
        metrics = ("macs", *CATEGORIES)
        tables = {metric: self.by_module(metric, depth) for metric in metrics}
        modules = dict.fromkeys(name for table in tables.values() for name in table)
        return [
            {"module": name, "macs": tables["macs"].get(name, 0),
             **{f"{c}_elems": tables[c].get(name, 0) for c in CATEGORIES}}
            for name in modules
        ]


def aggregate_by_prefix(per_module: Mapping[str, int], depth: int) -> dict[str, int]:
    """Sum per-module counts over the first ``depth`` components of each name.

    ``depth=1`` gives a detector's parts ("backbone", "neck", "head"), ``depth=2`` its
    stages ("backbone.stage2"); ``depth=0`` gives one total under "". Names with fewer
    components (and the root, "") keep their own entry. Order is first appearance.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    totals: dict[str, int] = {}
    for name, value in per_module.items():
        key = ".".join(name.split(".")[:depth]) if name else ""
        totals[key] = totals.get(key, 0) + value
    return totals


def _check_metric(metric: str, allow_macs: bool) -> None:
    allowed = (("macs",) if allow_macs else ()) + CATEGORIES
    if metric not in allowed:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(allowed)}")


# ----------------------------------------------------------------------------- the pass


class _ModuleStack:
    """The innermost running module's name, from global module hooks that exist only
    inside the ``with`` block (so no hook is ever registered on the model itself)."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self._names = {id(module): name for name, module in modules.items()}
        self._stack = [""]
        self._handles: list[Any] = []

    def current(self) -> str:
        return self._stack[-1]

    def _enter(self, module: nn.Module, args: Any) -> None:
        # a module outside the model (built on the fly) runs under its caller's name
        self._stack.append(self._names.get(id(module), self._stack[-1]))

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if len(self._stack) > 1:
            self._stack.pop()

    def __enter__(self) -> _ModuleStack:
        self._handles = [
            register_module_forward_pre_hook(self._enter),
            register_module_forward_hook(self._leave),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _CountingMode(TorchDispatchMode):
    """Tallies every dispatched op by its rule and the module running it."""

    def __init__(self, where: Callable[[], str], kernel: Kernel | None = None,
                 observe: Callable[[Any], None] | None = None) -> None:
        super().__init__()
        self._where = where
        self._kernel = kernel
        self._observe = observe
        self.by_module: dict[str, defaultdict[str, int]] = {
            kind: defaultdict(int) for kind in ("macs", *CATEGORIES)
        }
        self.macs_by_op: Counter[str] = Counter()
        self.elements_by_op: Counter[str] = Counter()
        self.macs_by_module_op: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.calls: Counter[str] = Counter()
        # op -> [calls, modules (ordered), may hide MACs]
        self.unclassified: dict[str, list[Any]] = {}

    def __torch_dispatch__(
        self, func: torch._ops.OpOverload, types: Any, args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        key = str(func)
        self.calls[key] += 1
        name = op_name(func)
        rule = rule_for(name)
        if rule is None:
            with self:  # count the parts of a composite op we have no rule for
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            self._unclassified(key, name, args, kwargs)
            return self._run(func, args, kwargs)
        out = self._run(func, args, kwargs)
        kind, count = rule
        if kind != "free":
            amount = count(_with_kwargs(func, args, kwargs), out)
            amounts = amount if isinstance(amount, Mapping) else {kind: amount}
            where = self._where()
            for each, value in amounts.items():
                if each not in self.by_module:
                    raise ValueError(f"the rule for {name!r} returned an amount of unknown kind {each!r}")
                self.by_module[each][where] += int(value)
                if each == "macs":
                    self.macs_by_op[key] += int(value)
                    self.macs_by_module_op[where][key] += int(value)
                else:
                    self.elements_by_op[key] += int(value)
        return out

    def _run(self, func: torch._ops.OpOverload, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        out = func(*args, **kwargs) if self._kernel is None else self._kernel(func, args, kwargs)
        if self._observe is not None:
            self._observe(out)
        return out

    def _unclassified(
        self, key: str, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        entry = self.unclassified.setdefault(key, [0, {}, False])
        entry[0] += 1
        entry[1].setdefault(self._where(), None)
        if not entry[2] and name not in MAC_FREE_OPS:
            entry[2] = any(
                isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2
                for t in tree_flatten((args, kwargs))[0]
            )


def _with_kwargs(
    func: torch._ops.OpOverload, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Sequence[Any]:
    """Positional arguments, with any passed by keyword put back in schema order."""
    if not kwargs:
        return args
    full = list(args)
    for argument in func._schema.arguments[len(args):]:
        if argument.kwarg_only:
            break
        full.append(kwargs.get(argument.name, argument.default_value))
    return full


def _as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def count_compute(model: nn.Module, inputs: Inputs, *, kernel: Kernel | None = None,
                  observe: Callable[[Any], None] | None = None) -> ComputeCount:
    """Count what one inference forward pass of ``model`` on ``inputs`` computes.

    The pass runs in eval mode under ``torch.inference_mode()``; every module's
    ``training`` flag is restored afterwards, and nothing else about the model changes.

    Args:
        model: Any ``nn.Module``.
        inputs: One tensor, or a tuple of positional inputs.
        kernel: Computes each op instead of the op itself (``archbench.profilers.meta``
            answers ops on the meta device by shape), in the same pass.
        observe: Called with every op's output in the same pass (an activation
            tracker's ``observe``), so that counting and tracking cost one dispatch.
    """
    args = _as_tuple(inputs)
    modules = dict(model.named_modules())
    training = [module for module in modules.values() if module.training]
    stack = _ModuleStack(modules)
    mode = _CountingMode(stack.current, kernel, observe)
    if training:  # models are built in eval mode: usually nothing to switch
        model.eval()
    try:
        with torch.inference_mode(), stack, mode:
            model(*args)
    finally:
        for module in training:
            module.training = True

    def table(kind: str) -> dict[str, int]:
        return {name: value for name, value in mode.by_module[kind].items() if value}

    elements_by_module = {category: table(category) for category in CATEGORIES}
    return ComputeCount(
        macs=sum(mode.by_module["macs"].values()),
        macs_by_module=table("macs"),
        **{category: sum(elements_by_module[category].values()) for category in CATEGORIES},
        elements_by_module=elements_by_module,
        macs_by_op=dict(mode.macs_by_op),
        elements_by_op=dict(mode.elements_by_op),
        op_calls=dict(mode.calls),
        unclassified_ops=frozenset(mode.unclassified),
        input_shapes=tuple(tuple(t.shape) for t in args),
        macs_by_module_op={
            name: dict(ops) for name, ops in mode.macs_by_module_op.items() if any(ops.values())
        },
        unclassified=tuple(
            UnclassifiedOp(op, calls, tuple(modules), hides)
            for op, (calls, modules, hides) in mode.unclassified.items()
        ),
    )


__all__ = [
    "ComputeCount",
    "Inputs",
    "UnclassifiedOp",
    "UncountedOpWarning",
    "aggregate_by_prefix",
    "count_compute",
    "unclassified_from_text",
    "unclassified_to_text",
    "warn_uncounted",
]

"""From a spec to a model: ``create_model(name, **overrides)``.

Builders are looked up by key in ``BUILDERS`` (module paths, imported on first
use so that listing variants never imports torch) or given by third-party specs
as ``"package.module:function"``. Overrides are checked against the builder's
signature and annotations, so a typo or a wrong type is one clear error.

A builder that composes other variants (the detector builds its backbone by name)
declares a keyword-only ``create_variant`` parameter; the factory passes a function
that builds from the same registry, so components never import back up.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from archbench.components import ComponentRegistry
from archbench.errors import ArchbenchError
from archbench.registry import Registry, default_registry
from archbench.specs import VariantSpec

BUILDERS = ComponentRegistry[str]("builder")
"""Built-in builder keys -> ``"module:function"``, imported on first use."""
BUILDERS.register("esnet", "archbench.models.esnet:build_esnet")
BUILDERS.register("shufflenetv2", "archbench.models.shufflenetv2:build_shufflenetv2")
BUILDERS.register("detector", "archbench.models.detector:build_detector")

#: Builder parameters the factory fills in itself; specs and overrides cannot set them.
INJECTED = frozenset({"create_variant"})


def resolve_builder(key: str) -> Callable[..., Any]:
    """The builder function a spec names."""
    target = BUILDERS.get(key) if key in BUILDERS else key
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise ArchbenchError(f"unknown builder {key!r}; use one of {', '.join(BUILDERS)} or 'module:function'")
    try:
        builder: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
        return builder
    except (ImportError, AttributeError) as exc:
        raise ArchbenchError(f"cannot import builder {target!r}: {exc}") from None


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits a builder annotation (bool is not accepted as an int)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if origin is not None:  # Sequence[int], list[int], ...
        return isinstance(value, list | tuple)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def check_arguments(builder: Callable[..., Any], args: Mapping[str, Any], variant: str) -> None:
    """Raise one clear error for an argument the builder does not take, or of the wrong type."""
    hints = typing.get_type_hints(builder)
    params = inspect.signature(builder).parameters
    for key, value in args.items():
        if key not in params or key in INJECTED:
            accepted = ", ".join(p for p in params if p not in INJECTED)
            raise ArchbenchError(f"variant {variant!r}: unknown argument {key!r} (accepted: {accepted})")
        if not _accepts(hints.get(key, inspect.Parameter.empty), value):
            raise ArchbenchError(
                f"variant {variant!r}: argument {key!r}={value!r} must be {_describe(hints[key])}"
            )


def build_model(spec: VariantSpec, registry: Registry | None = None, **overrides: Any) -> Any:
    """Build the module a spec describes, in eval mode on the CPU; variants it composes
    come from ``registry`` (default: the built-in one)."""
    builder = resolve_builder(spec.builder)
    args = {**spec.args, **overrides}
    check_arguments(builder, args, spec.name)
    if "create_variant" in inspect.signature(builder).parameters:
        args["create_variant"] = functools.partial(create_model, registry=registry)
    try:
        model = builder(**args)
    except ValueError as exc:
        raise ArchbenchError(f"variant {spec.name!r}: {exc}") from None
    return model.eval()


DEFAULT_SEED = 0


def create_model(name: str, registry: Registry | None = None, seed: int | None = DEFAULT_SEED,
                 **overrides: Any) -> Any:
    """Build a registered variant: ``create_model("esnet_m", se=False)``.

    Args:
        name: Variant name or alias (see ``list_variants``).
        registry: Defaults to the built-in registry plus installed plugins.
        seed: Seeds the weight initialisation, so the same name, arguments and seed give
            the same weights in every process; the caller's random state is left as it
            was. ``None`` draws from the global generator instead.
        **overrides: Builder arguments replacing the spec's, e.g. ``se``,
            ``branch`` ("ghost" or "dw"), ``act``, ``num_classes``.

    Returns:
        A ``torch.nn.Module`` in eval mode on the CPU.
    """
    import torch

    registry = registry or default_registry()
    spec = registry.get(name)
    if seed is None:
        return build_model(spec, registry, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec, registry, **overrides)


def create_meta_model(name: str, registry: Registry | None = None, **overrides: Any) -> Any:
    """``create_model`` on the meta device: the same modules, parameter and buffer shapes,
    with no storage and no values, so nothing is initialised or seeded
    (``archbench.profilers.meta.no_initialisation``). What params, MACs and the activation
    peak are counted on (``archbench expect``, a sweep's static cells)."""
    import torch

    from archbench.profilers.meta import no_initialisation

    with torch.device("meta"), no_initialisation():
        return create_model(name, registry=registry, seed=None, **overrides)

"""Variant specs: declarative, frozen, and free of torch.

A spec says *what* a variant is (name, family, kind, builder, arguments); the
builders in :mod:`archbench.models` say *how* to build it. Specs are read from
TOML files (``variants/*.toml``) as plain data: no eval, no exec, no pickle.

File format::

    [[family]]
    name = "shufflenetv2"
    aliases = ["shufflev2"]
    description = "..."

    [[variant]]
    name = "shufflenetv2_x1_0"
    family = "shufflenetv2"
    kind = "backbone"
    builder = "shufflenetv2"
    args = { stage_channels = [116, 232, 464], conv5_channels = 1024 }

    [[ablation]]            # one change applied to every base member of a family
    suffix = "se"
    family = "shufflenetv2"
    args = { se = true }
    description = "with SE"

An ablation makes the variant ``<base>.<suffix>`` for each base member of the
family: its arguments are the base's merged with the ablation's, so a
"base + one change" variant never copies the base definition.

A search space names a base variant and, per argument, the choices (sampling,
naming and membership are in :mod:`archbench.spaces`)::

    [[space]]
    name = "esnet_ratio"
    base = "esnet_m"
    description = "..."
    args.scale = { choices = [0.75, 1.0, 1.25] }
    args.channel_ratio = { items = 13, choices = [0.5, 0.625, 0.75, 0.875, 1.0] }
    args.se = { items = 3, choices = [true, false], default = true }

``items = n``: the argument is a list of n values, each chosen on its own.
``default``: the builder's default, which a registered variant that leaves the
argument out has (used to find the registered variants that lie in the space).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from archbench.errors import SpecError

Kind = Literal["backbone", "neck", "detector"]
KINDS: tuple[str, ...] = get_args(Kind)

# Scalars and lists of scalars only: specs are data.
ArgValue = bool | int | float | str | list[Any] | None


@dataclass(frozen=True)
class FamilySpec:
    """A named group of variants; selecting the family selects its base members."""

    name: str
    aliases: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class VariantSpec:
    """Everything needed to build one variant, as data.

    Attributes:
        name: Unique registry name, e.g. ``esnet_m`` or ``esnet_m.nose``.
        family: Family name, e.g. ``esnet``.
        kind: ``backbone``, ``neck`` or ``detector``.
        builder: A built-in builder key (see ``archbench.models.BUILDERS``) or
            ``"package.module:function"`` for third-party builders.
        args: Keyword arguments for the builder (read-only).
        aliases: Other names that resolve to this variant.
        base: For an ablation, the variant it changes; ``None`` for a base variant.
        description: One line for listings.
        source: Where the spec came from (a file path or entry point), for errors.
    """

    name: str
    family: str
    kind: Kind
    builder: str
    args: Mapping[str, ArgValue] = field(default_factory=lambda: MappingProxyType({}))
    aliases: tuple[str, ...] = ()
    base: str | None = None
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", MappingProxyType(dict(self.args)))

    @property
    def is_ablation(self) -> bool:
        return self.base is not None

    def derive(self, suffix: str, args: Mapping[str, ArgValue], description: str) -> VariantSpec:
        """The ablation ``<name>.<suffix>``: this spec with ``args`` changed."""
        return VariantSpec(
            name=f"{self.name}.{suffix}",
            family=self.family,
            kind=self.kind,
            builder=self.builder,
            args={**self.args, **args},
            base=self.name,
            description=description,
            source=self.source,
        )


@dataclass(frozen=True)
class SpaceArg:
    """One argument of a search space: its choices, per item when ``items`` is set.

    Attributes:
        name: The builder argument.
        choices: The values it may take (scalars, in the order that numbers them).
        items: For a list argument, its length (each item is chosen on its own); else None.
        default: The builder's default, for registered variants that leave the argument out.
        has_default: Whether ``default`` was given (it may itself be ``None``).
    """

    name: str
    choices: tuple[ArgValue, ...]
    items: int | None = None
    default: ArgValue = None
    has_default: bool = False

    @property
    def digits(self) -> int:
        """How many independent choices it makes (``items``, or 1)."""
        return self.items or 1


@dataclass(frozen=True)
class SpaceSpec:
    """A search space: a base variant and, per argument, the choices (see ``archbench.spaces``)."""

    name: str
    base: str
    args: tuple[SpaceArg, ...]
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class SpecFile:
    """The parsed contents of one spec file."""

    families: tuple[FamilySpec, ...]
    variants: tuple[VariantSpec, ...]
    spaces: tuple[SpaceSpec, ...] = ()


# key -> (python types accepted, required)
_FAMILY_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "aliases": ((list,), False),
    "description": ((str,), False),
}
_VARIANT_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "family": ((str,), True),
    "kind": ((str,), True),
    "builder": ((str,), True),
    "args": ((dict,), False),
    "aliases": ((list,), False),
    "description": ((str,), False),
}
_ABLATION_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "suffix": ((str,), True),
    "family": ((str,), True),
    "args": ((dict,), True),
    "description": ((str,), False),
    "only": ((list,), False),
}
_SPACE_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "base": ((str,), True),
    "args": ((dict,), True),
    "description": ((str,), False),
}
_SPACE_ARG_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "choices": ((list,), True),
    "items": ((int,), False),
    "default": ((bool, int, float, str), False),
}
_TOP_KEYS = {"family", "variant", "ablation", "space"}
#: Space names: sample names are ``<space>-<code>``, so no ``-`` (nor ``.``, the ablation mark).
_SPACE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _check_table(
    table: Any, schema: dict[str, tuple[tuple[type, ...], bool]], where: str
) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in schema:
            raise SpecError(f"{where}: unknown key {key!r} (allowed: {', '.join(schema)})")
        types, _ = schema[key]
        # bool is an int in Python; a spec that says `name = true` is still wrong.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join(t.__name__ for t in types)
            raise SpecError(f"{where}: key {key!r} must be {wanted}, got {type(value).__name__}")
    for key, (_, required) in schema.items():
        if required and key not in table:
            raise SpecError(f"{where}: missing required key {key!r}")
    return table


def _check_args(args: dict[str, Any], where: str) -> dict[str, ArgValue]:
    for key, value in args.items():
        if isinstance(value, dict):
            raise SpecError(f"{where}: argument {key!r} must be a scalar or a list, not a table")
    return args


def parse_spec_text(text: str, source: str) -> SpecFile:
    """Parse and validate one spec file's TOML text.

    Raises:
        SpecError: naming ``source``, the variant and the offending key.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None
    for key in data:
        if key not in _TOP_KEYS:
            raise SpecError(f"{source}: unknown top-level key {key!r} (allowed: family, variant, ablation, space)")

    families = []
    for i, raw in enumerate(data.get("family", [])):
        table = _check_table(raw, _FAMILY_KEYS, f"{source}: family #{i + 1}")
        families.append(
            FamilySpec(table["name"], tuple(table.get("aliases", ())), table.get("description", ""))
        )

    variants: list[VariantSpec] = []
    for i, raw in enumerate(data.get("variant", [])):
        label = raw.get("name", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        where = f"{source}: variant {label}"
        table = _check_table(raw, _VARIANT_KEYS, where)
        if table["kind"] not in KINDS:
            raise SpecError(f"{where}: key 'kind' must be one of {', '.join(KINDS)}, got {table['kind']!r}")
        variants.append(
            VariantSpec(
                name=table["name"],
                family=table["family"],
                kind=table["kind"],
                builder=table["builder"],
                args=_check_args(table.get("args", {}), where),
                aliases=tuple(table.get("aliases", ())),
                description=table.get("description", ""),
                source=source,
            )
        )

    for i, raw in enumerate(data.get("ablation", [])):
        label = raw.get("suffix", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        where = f"{source}: ablation {label}"
        table = _check_table(raw, _ABLATION_KEYS, where)
        only = set(table.get("only", ()))
        bases = [v for v in variants if v.family == table["family"] and not v.is_ablation]
        if not bases:
            raise SpecError(f"{where}: family {table['family']!r} has no variants in this file")
        unknown_only = only - {v.name for v in bases}
        if unknown_only:
            raise SpecError(f"{where}: key 'only' names unknown variants {sorted(unknown_only)}")
        args = _check_args(table["args"], where)
        for base in bases:
            if not only or base.name in only:
                variants.append(base.derive(table["suffix"], args, table.get("description", "")))
    spaces = tuple(_parse_space(raw, i, source) for i, raw in enumerate(data.get("space", [])))
    return SpecFile(tuple(families), tuple(variants), spaces)


def _same_value(a: Any, b: Any) -> bool:
    """Equality that keeps ``true`` apart from ``1`` (TOML types them apart too)."""
    return (isinstance(a, bool) == isinstance(b, bool)) and a == b


def _parse_space_arg(name: str, raw: Any, where: str) -> SpaceArg:
    table = _check_table(raw, _SPACE_ARG_KEYS, f"{where}: argument {name!r}")
    choices = table["choices"]
    if not choices:
        raise SpecError(f"{where}: argument {name!r} has no choices")
    for value in choices:
        if not isinstance(value, bool | int | float | str):
            raise SpecError(f"{where}: argument {name!r}: choices must be scalars, got {type(value).__name__}")
    for i, value in enumerate(choices):
        if any(_same_value(value, other) for other in choices[:i]):
            raise SpecError(f"{where}: argument {name!r}: choice {value!r} is listed twice")
    items = table.get("items")
    if items is not None and (isinstance(items, bool) or items < 1):
        raise SpecError(f"{where}: argument {name!r}: key 'items' must be a positive integer, got {items!r}")
    return SpaceArg(name, tuple(choices), items, table.get("default"), "default" in table)


def _parse_space(raw: Any, i: int, source: str) -> SpaceSpec:
    label = raw.get("name", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
    where = f"{source}: space {label}"
    table = _check_table(raw, _SPACE_KEYS, where)
    name = table["name"]
    if not name or not set(name) <= _SPACE_NAME_CHARS:
        raise SpecError(f"{where}: a space name takes lower-case letters, digits and '_' only")
    if not table["args"]:
        raise SpecError(f"{where}: key 'args' names no argument")
    args = tuple(_parse_space_arg(key, value, where) for key, value in table["args"].items())
    return SpaceSpec(name, table["base"], args, table.get("description", ""), source)


def load_spec_file(path: Path) -> SpecFile:
    """Read and parse one spec file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: spec file is not UTF-8 text") from None
    return parse_spec_text(text, str(path))


def builtin_spec_dir() -> Path:
    """The shipped ``variants/`` folder: inside the wheel, or beside the package in a checkout."""
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "_variants"
    return installed if installed.is_dir() else package_dir.parent / "variants"


def load_spec_files(paths: Iterable[Path]) -> list[SpecFile]:
    return [load_spec_file(p) for p in sorted(paths)]

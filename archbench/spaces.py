"""Search spaces: points, their names, deterministic sampling, and membership.

A space (``SpaceSpec``, read from ``[[space]]`` tables beside the variant specs) names
a base variant and, per argument, the choices. A *point* picks one choice per
argument (per item for list arguments such as ESNet's 13 ``channel_ratio`` values).

**Names.** A point is numbered in mixed radix: each independent choice is one digit
(its index in the argument's ``choices``), digits in the order the space declares its
arguments and items, the first one most significant. The number, written in base 36
and zero-padded to the width of the space's largest number, follows the space's name:
``esnet_ratio-0f3k9qa``. The name is therefore derived from the arguments alone and
decodes back to them with nothing stored: ``archbench.create_model(name)`` and
``archbench show name`` rebuild the point through the registry, on any machine. A
name whose number does not decode (a character outside ``0-9a-z``, the wrong width,
or a number past the space's size) is one error line.

**Sampling** is deterministic and machine independent: draw ``i`` is
``sha256("<space>:<seed>:<i>")`` read as an integer, modulo the space's size; a point
already drawn is skipped. It does not depend on Python's hash randomisation or on
``random``'s algorithm, and the first N samples of a seed are the same whatever N is.

**Membership.** A registered variant lies in a space when it has the base's builder,
every argument the space does not vary equals the base's, and each varied argument
(the space's ``default`` where the variant leaves it out; a scalar given for a list
argument counts for every item) is one of the choices. ``archbench space show`` lists
them with their points, and a sweep measures them beside the samples.

Importing this module does not import torch; ``check_space`` does.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from archbench.errors import ArchbenchError, UnknownVariantError
from archbench.specs import ArgValue, SpaceArg, SpaceSpec, VariantSpec

if TYPE_CHECKING:
    from archbench.registry import Registry

DIGITS = string.digits + string.ascii_lowercase
SEPARATOR = "-"


def radices(space: SpaceSpec) -> list[int]:
    """The number of choices of every digit, most significant first."""
    return [len(arg.choices) for arg in space.args for _ in range(arg.digits)]


def space_size(space: SpaceSpec) -> int:
    """How many points the space has."""
    size = 1
    for radix in radices(space):
        size *= radix
    return size


def code_width(space: SpaceSpec) -> int:
    """Base-36 digits of the largest point number."""
    return len(_base36(space_size(space) - 1))


def _base36(number: int) -> str:
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = DIGITS[digit] + text
        if number == 0:
            return text


def number_of(space: SpaceSpec, indices: Sequence[int]) -> int:
    """The point number of per-digit choice indices."""
    number = 0
    for index, radix in zip(indices, radices(space), strict=True):
        number = number * radix + index
    return number


def indices_of(space: SpaceSpec, number: int) -> list[int]:
    """Per-digit choice indices of a point number (``0 <= number < space_size``)."""
    indices = []
    for radix in reversed(radices(space)):
        number, index = divmod(number, radix)
        indices.append(index)
    return indices[::-1]


def sample_name(space: SpaceSpec, number: int) -> str:
    return f"{space.name}{SEPARATOR}{_base36(number).rjust(code_width(space), '0')}"


def split_sample_name(name: str) -> tuple[str, str] | None:
    """``("esnet_ratio", "0f3k9qa")`` for a name shaped like a sample's, else None."""
    space, sep, code = name.rpartition(SEPARATOR)
    return (space, code) if sep and space and code else None


def decode(space: SpaceSpec, code: str) -> int:
    """The point number a sample name's code stands for; ``UnknownVariantError`` if none."""
    width, size = code_width(space), space_size(space)
    why = ""
    if len(code) != width or any(ch not in DIGITS for ch in code):
        why = f"its code must be {width} characters from 0-9a-z"
    elif (number := int(code, 36)) >= size:
        why = f"its code decodes to {number:,}, past the space's {size:,} points"
    if why:
        raise UnknownVariantError(f"{space.name}{SEPARATOR}{code} is not a point of space {space.name}: {why}")
    return number


def point_args(space: SpaceSpec, number: int) -> dict[str, ArgValue]:
    """The builder arguments a point sets (the varied ones only)."""
    indices = iter(indices_of(space, number))
    args: dict[str, ArgValue] = {}
    for arg in space.args:
        if arg.items is None:
            args[arg.name] = arg.choices[next(indices)]
        else:
            args[arg.name] = [arg.choices[next(indices)] for _ in range(arg.items)]
    return args


def sample_spec(space: SpaceSpec, base: VariantSpec, number: int) -> VariantSpec:
    """The variant of one point: the base's arguments with the point's choices."""
    return VariantSpec(
        name=sample_name(space, number), family=base.family, kind=base.kind, builder=base.builder,
        args={**base.args, **point_args(space, number)},
        description=f"a point of space {space.name} (base {base.name})", source=space.source,
    )


def sample_numbers(space: SpaceSpec, count: int, seed: int) -> list[int]:
    """``count`` distinct point numbers, drawn deterministically from ``seed`` (module docstring)."""
    size = space_size(space)
    if count > size:
        raise ArchbenchError(f"space {space.name} has only {size:,} points; ask for at most that many samples")
    drawn: dict[int, None] = {}
    draw = 0
    while len(drawn) < count:
        digest = hashlib.sha256(f"{space.name}:{seed}:{draw}".encode()).digest()
        drawn.setdefault(int.from_bytes(digest, "big") % size)
        draw += 1
    return list(drawn)


def sample_names(space: SpaceSpec, count: int, seed: int = 0) -> list[str]:
    """The names of ``count`` points sampled with ``seed`` (same seed, same names, anywhere)."""
    return [sample_name(space, n) for n in sample_numbers(space, count, seed)]


# -- membership ---------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps ``True`` apart from ``1``."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _choice_index(arg: SpaceArg, value: Any) -> int | None:
    return next((i for i, choice in enumerate(arg.choices) if _same(choice, value)), None)


def _arg_indices(arg: SpaceArg, spec: VariantSpec) -> list[int] | None:
    """The digits ``spec`` has for one varied argument, or None if it is not among the choices."""
    if arg.name in spec.args:
        value: Any = spec.args[arg.name]
    elif arg.has_default:
        value = arg.default
    else:
        return None
    if arg.items is not None:
        values = value if isinstance(value, list | tuple) else [value] * arg.items
        if len(values) != arg.items:
            return None
    elif isinstance(value, list | tuple):
        return None
    else:
        values = [value]
    found = [_choice_index(arg, v) for v in values]
    return None if any(i is None for i in found) else [i for i in found if i is not None]


def point_of(space: SpaceSpec, base: VariantSpec, spec: VariantSpec) -> int | None:
    """The point number ``spec`` is in ``space``, or None if it does not lie in it."""
    varied = {arg.name for arg in space.args}
    fixed = {k: v for k, v in spec.args.items() if k not in varied}
    base_fixed = {k: v for k, v in base.args.items() if k not in varied}
    if spec.builder != base.builder or fixed.keys() != base_fixed.keys():
        return None
    if not all(_same(v, base_fixed[k]) for k, v in fixed.items()):
        return None
    indices: list[int] = []
    for arg in space.args:
        found = _arg_indices(arg, spec)
        if found is None:
            return None
        indices += found
    return number_of(space, indices)


@dataclass(frozen=True)
class Member:
    """A registered variant that lies in a space, and its point there."""

    variant: str
    number: int
    name: str  # the point's sample name


def members(space: SpaceSpec, registry: Registry) -> list[Member]:
    """The registered variants that lie in ``space``, in registration order."""
    base = registry.get(space.base)
    found = []
    for spec in registry:
        number = point_of(space, base, spec)
        if number is not None:
            found.append(Member(spec.name, number, sample_name(space, number)))
    return found


def describe_args(space: SpaceSpec) -> Iterator[tuple[str, str, int]]:
    """Per argument: its name, its choices as text, and how many values it can take."""
    for arg in space.args:
        choices = " | ".join(map(_text, arg.choices))
        if arg.items is None:
            yield arg.name, choices, len(arg.choices)
        else:
            yield arg.name, f"{arg.items} x ({choices})", len(arg.choices) ** arg.items


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_space(space: SpaceSpec, registry: Registry) -> None:
    """Bad input in a space is one ``ArchbenchError``: an argument its base's builder does not
    take, or a choice of the wrong type (imports the builder, and so torch). A choice of the
    right type that the builder rejects is not bad input: that point's cells fail when measured."""
    from archbench.factory import check_arguments, resolve_builder

    base = registry.get(space.base)
    builder = resolve_builder(base.builder)
    for arg in space.args:
        for choice in arg.choices:
            value = choice if arg.items is None else [choice] * arg.items
            try:
                check_arguments(builder, {arg.name: value}, base.name)
            except ArchbenchError as exc:
                raise ArchbenchError(f"space {space.name} ({space.source}): {str(exc).split(': ', 1)[-1]}") from None

"""The variant registry and the selector that turns ``--variants`` text into variants.

Lookup order for each comma-separated token (torchvision's and fvcore's rules):

1. exact variant name or alias;
2. family name or alias, which expands to the family's *base* members
   (ablations such as ``esnet_m.nose`` are selected by name or wildcard);
3. a shell-style wildcard (``esnet_*``, ``*.nose``) over names and aliases.

A token that matches nothing is an error that names it and suggests close
matches. Registering a name twice is an error. Importing this module does not
import torch.

The registry also holds the search spaces (``[[space]]``) and resolves the name of
any point of one (``esnet_ratio-0f3k9qa``, see ``archbench.spaces``) to its variant,
as if it were registered: ``get``, ``select`` and so ``create_model`` take it.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path

from archbench.errors import ArchbenchError, SpecError, UnknownVariantError
from archbench.specs import (
    FamilySpec,
    SpaceSpec,
    SpecFile,
    VariantSpec,
    builtin_spec_dir,
    load_spec_file,
    load_spec_files,
)

ENTRY_POINT_GROUP = "archbench.variants"


class Registry:
    """Variants and families by name, in registration order."""

    def __init__(self) -> None:
        self._variants: dict[str, VariantSpec] = {}
        self._families: dict[str, FamilySpec] = {}
        self._aliases: dict[str, str] = {}  # alias -> variant or family name
        self._spaces: dict[str, SpaceSpec] = {}
        self._samples: dict[str, VariantSpec] = {}  # points of spaces, resolved once

    # -- registration -----------------------------------------------------
    def _claim(self, name: str, owner: str, source: str) -> None:
        if name in self._variants or name in self._families or name in self._aliases:
            raise SpecError(f"{source}: name {name!r} is already registered")
        if owner != name:
            self._aliases[name] = owner

    def add_family(self, family: FamilySpec, source: str = "") -> None:
        self._claim(family.name, family.name, source or family.name)
        self._families[family.name] = family
        for alias in family.aliases:
            self._claim(alias, family.name, source or family.name)

    def add(self, spec: VariantSpec) -> None:
        source = spec.source or spec.name
        self._claim(spec.name, spec.name, source)
        if spec.family not in self._families:
            self.add_family(FamilySpec(spec.family), source)
        self._variants[spec.name] = spec
        for alias in spec.aliases:
            self._claim(alias, spec.name, source)

    def add_space(self, space: SpaceSpec) -> None:
        """Register a search space; its base must be a registered variant."""
        source = space.source or space.name
        if space.name in self._spaces:
            raise SpecError(f"{source}: space {space.name!r} is already registered")
        target = self._aliases.get(space.base, space.base)
        if target not in self._variants:
            raise SpecError(f"{source}: space {space.name!r}: base {space.base!r} is not a registered variant")
        self._spaces[space.name] = space

    def add_file(self, spec_file: SpecFile) -> None:
        for family in spec_file.families:
            self.add_family(family)
        for spec in spec_file.variants:
            self.add(spec)
        for space in spec_file.spaces:
            self.add_space(space)

    # -- lookup -----------------------------------------------------------
    def __iter__(self) -> Iterator[VariantSpec]:
        return iter(self._variants.values())

    def __len__(self) -> int:
        return len(self._variants)

    def __contains__(self, name: object) -> bool:
        """Registered names and aliases (points of spaces resolve through ``get`` but are not listed)."""
        return name in self._variants or name in self._aliases

    @property
    def families(self) -> dict[str, FamilySpec]:
        return dict(self._families)

    @property
    def spaces(self) -> dict[str, SpaceSpec]:
        return dict(self._spaces)

    def space(self, name: str) -> SpaceSpec:
        """The search space called ``name``; one error line naming the known ones if none."""
        if name in self._spaces:
            return self._spaces[name]
        known = ", ".join(self._spaces) or "none"
        raise ArchbenchError(f"unknown space {name!r}; known spaces: {known} (see `archbench space list`)")

    def get(self, name: str) -> VariantSpec:
        """The variant called ``name`` (or aliased so), or the point of a space so named."""
        target = self._aliases.get(name, name)
        if target in self._variants:
            return self._variants[target]
        sample = self._sample(name)
        if sample is not None:
            return sample
        raise UnknownVariantError(self._unknown_message(name))

    def _sample(self, name: str) -> VariantSpec | None:
        """The point of a space that ``name`` names; None if it is not shaped like one
        (``UnknownVariantError`` if its space is known but the code decodes to nothing)."""
        if name in self._samples:
            return self._samples[name]
        from archbench.spaces import decode, sample_spec, split_sample_name

        parts = split_sample_name(name)
        if parts is None or parts[0] not in self._spaces:
            return None
        space = self._spaces[parts[0]]
        spec = sample_spec(space, self.get(space.base), decode(space, parts[1]))
        self._samples[name] = spec
        return spec

    def family_members(self, family: str) -> list[VariantSpec]:
        return [v for v in self if v.family == family and not v.is_ablation]

    def _all_names(self) -> list[str]:
        return [*self._variants, *self._families, *self._aliases]

    def _unknown_message(self, token: str) -> str:
        close = difflib.get_close_matches(token, self._all_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `archbench list`"
        from archbench.spaces import split_sample_name

        parts = split_sample_name(token)
        if parts is not None and not close:
            hint = f"; no space is called {parts[0]!r} (see `archbench space list`)"
        return f"unknown variant {token!r}{hint}"

    def resolve_token(self, token: str) -> list[VariantSpec]:
        """Resolve one selector token; see the module docstring for the order."""
        target = self._aliases.get(token, token)
        if target in self._variants:
            return [self._variants[target]]
        sample = self._sample(token)
        if sample is not None:
            return [sample]
        if target in self._families:
            return self.family_members(target)
        if any(ch in token for ch in "*?["):
            matches = [
                v for v in self
                if fnmatch.fnmatchcase(v.name, token)
                or any(fnmatch.fnmatchcase(a, token) for a in v.aliases)
            ]
            if matches:
                return matches
            raise UnknownVariantError(f"pattern {token!r} matches no variant; see `archbench list`")
        raise UnknownVariantError(self._unknown_message(token))

    def select(self, selection: str | Iterable[str]) -> list[VariantSpec]:
        """Resolve comma-separated tokens (or a list of them) to unique variants, in order."""
        tokens = parse_list(selection) if isinstance(selection, str) else list(selection)
        if not tokens:
            raise ArchbenchError("empty variant selection; name at least one variant or family")
        chosen: dict[str, VariantSpec] = {}
        for token in tokens:
            for spec in self.resolve_token(token):
                chosen.setdefault(spec.name, spec)
        return list(chosen.values())

    def filter(self, pattern: str | None = None) -> list[VariantSpec]:
        """Variants whose name matches a wildcard, or who belong to a family named ``pattern``."""
        if pattern is None:
            return list(self)
        family = self._aliases.get(pattern, pattern)
        if family in self._families:
            return [v for v in self if v.family == family]
        if not any(ch in pattern for ch in "*?["):
            pattern = f"*{pattern}*"
        return [v for v in self if fnmatch.fnmatchcase(v.name, pattern)]


def parse_list(text: str) -> list[str]:
    """Split comma-separated text, rejecting empty items such as ``a,,b``."""
    if not text.strip():
        return []
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ArchbenchError(f"malformed list {text!r}: empty item between commas")
    return items


def _entry_point_specs() -> Iterator[SpecFile]:
    """Specs contributed by installed packages through the ``archbench.variants`` group.

    Each entry point names a callable returning a ``SpecFile`` or an iterable of
    ``VariantSpec``; nothing else is imported.
    """
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            provider: Callable[[], SpecFile | Iterable[VariantSpec]] = ep.load()
            provided = provider()
        except Exception as exc:
            raise SpecError(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from None
        if isinstance(provided, SpecFile):
            yield provided
        else:
            yield SpecFile((), tuple(provided))


def build_registry(spec_files: Iterable[SpecFile], *, entry_points: bool = True) -> Registry:
    registry = Registry()
    for spec_file in spec_files:
        registry.add_file(spec_file)
    if entry_points:
        for spec_file in _entry_point_specs():
            registry.add_file(spec_file)
    return registry


@functools.cache
def default_registry() -> Registry:
    """The built-in variants plus those installed packages contribute (read once)."""
    return build_registry(load_spec_files(builtin_spec_dir().glob("*.toml")))


def registry_with(extra_spec_files: Iterable[Path]) -> Registry:
    """The default registry plus the user's own spec files (``archbench --specs FILE``)."""
    extra = list(extra_spec_files)
    if not extra:
        return default_registry()
    return build_registry([*load_spec_files(builtin_spec_dir().glob("*.toml")), *(load_spec_file(p) for p in extra)])

"""Search spaces: parsing, deterministic sampling, names that rebuild, membership, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archbench
from archbench.cli import main
from archbench.errors import ArchbenchError, SpecError, UnknownVariantError
from archbench.registry import registry_with
from archbench.spaces import (
    check_space,
    decode,
    members,
    point_args,
    sample_names,
    sample_numbers,
    space_size,
)
from archbench.specs import parse_spec_text
from tests.conftest import n_params

REGISTRY = archbench.default_registry()
ESNET = REGISTRY.space("esnet_ratio")
NECK = REGISTRY.space("picodet_neck")


def test_shipped_spaces_and_sizes() -> None:
    assert space_size(ESNET) == 3 * 5**13 * 2**3 * 2
    assert space_size(NECK) == 3 * 4 * 2 * 2 * 2
    check_space(ESNET, REGISTRY)
    check_space(NECK, REGISTRY)


def test_sampling_is_deterministic_and_prefix_stable() -> None:
    first = sample_names(ESNET, 50, seed=7)
    assert first == sample_names(ESNET, 50, seed=7)
    assert len(set(first)) == 50
    assert sample_names(ESNET, 10, seed=7) == first[:10]
    assert sample_names(ESNET, 10, seed=8) != first[:10]
    # pinned: the same seed gives the same points on any machine and Python
    assert sample_names(ESNET, 3, seed=0) == ["esnet_ratio-o7jvuth", "esnet_ratio-3ocx4da", "esnet_ratio-7oofpil"]


def test_small_space_can_be_sampled_whole_and_no_further() -> None:
    assert sorted(sample_numbers(NECK, 96, seed=1)) == list(range(96))
    with pytest.raises(ArchbenchError, match="only 96 points"):
        sample_numbers(NECK, 97, seed=1)


def test_names_decode_to_their_arguments() -> None:
    for name in sample_names(ESNET, 20, seed=3):
        spec = REGISTRY.get(name)
        number = decode(ESNET, name.split("-")[1])
        assert {k: spec.args[k] for k in point_args(ESNET, number)} == point_args(ESNET, number)
        assert len(spec.args["channel_ratio"]) == 13 and len(spec.args["se"]) == 3


def test_sample_rebuilds_from_its_name() -> None:
    name = sample_names(ESNET, 1, seed=5)[0]
    a, b = archbench.create_model(name), archbench.create_model(name)
    assert n_params(a) == n_params(b)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert main(["show", name, "--depth", "1"]) == 0


def test_registered_variants_lie_in_their_space_and_rebuild_the_same() -> None:
    found = {m.variant: m.name for m in members(ESNET, REGISTRY)}
    assert {"esnet_s", "esnet_m", "esnet_l", "esnet_m.nose", "esnet_m.dw"} <= set(found)
    assert not {"esnet_m.relu", "esnet_yolov5lite", "shufflenetv2_x1_0"} & set(found)
    for variant in ("esnet_s", "esnet_m.nose", "esnet_l.dw"):
        assert n_params(archbench.create_model(found[variant])) == n_params(archbench.create_model(variant))
    necks = {m.variant for m in members(NECK, REGISTRY)}
    assert {"picodet_s", "picodet_s.dense", "picodet_s.l3", "shufflenetv2_csp_pan"} == necks


def test_per_stage_se_changes_only_its_stage() -> None:
    all_se, mixed = archbench.create_model("esnet_m"), archbench.create_model("esnet_m", se=[True, False, True])
    no_se = archbench.create_model("esnet_m", se=False)
    assert n_params(no_se) < n_params(mixed) < n_params(all_se)
    assert n_params(archbench.create_model("esnet_m", se=[True, True, True])) == n_params(all_se)
    with pytest.raises(ArchbenchError, match="one true/false per stage"):
        archbench.create_model("esnet_m", se=[True, False])


@pytest.mark.parametrize(("name", "message"), [
    ("esnet_ratio-zzzzzzz", "past the space's"),
    ("esnet_ratio-12", "must be 7 characters"),
    ("esnet_ratio-ABCDEFG", "must be 7 characters"),
    ("nospace-0000000", "no space is called 'nospace'"),
])
def test_bad_sample_names_are_one_clear_error(name: str, message: str) -> None:
    with pytest.raises(UnknownVariantError, match=message):
        REGISTRY.get(name)


def test_unknown_space() -> None:
    with pytest.raises(ArchbenchError, match="unknown space 'nope'; known spaces: esnet_ratio, picodet_neck"):
        REGISTRY.space("nope")


BAD_SPACES = {
    "unknown_base": ('name = "s"\nbase = "nope"\nargs.scale = { choices = [1.0] }', "base 'nope' is not a registered"),
    "dash": ('name = "a-b"\nbase = "esnet_m"\nargs.scale = { choices = [1.0] }', "lower-case letters"),
    "empty": ('name = "s"\nbase = "esnet_m"\nargs.scale = { choices = [] }', "has no choices"),
    "twice": ('name = "s"\nbase = "esnet_m"\nargs.se = { choices = [true, true] }', "listed twice"),
    "table": ('name = "s"\nbase = "esnet_m"\nargs.scale = { choices = [{a = 1}] }', "must be scalars"),
    "key": ('name = "s"\nbase = "esnet_m"\nargs.scale = { values = [1.0] }', "unknown key 'values'"),
}


@pytest.mark.parametrize("case", BAD_SPACES)
def test_bad_space_specs(case: str, tmp_path: Path) -> None:
    text, message = BAD_SPACES[case]
    path = tmp_path / "s.toml"
    path.write_text(f"[[space]]\n{text}\n")
    with pytest.raises(SpecError, match=message):
        registry_with([path])


def test_unknown_argument_or_wrong_type_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[space]]\nname = "mine"\nbase = "esnet_m"\nargs.width = { choices = [1, 2] }\n')
    registry = registry_with([path])
    with pytest.raises(ArchbenchError, match=r"space mine .*unknown argument 'width'"):
        check_space(registry.space("mine"), registry)
    spec = parse_spec_text('[[space]]\nname = "t"\nbase = "esnet_m"\nargs.scale = { choices = ["big"] }', "x")
    registry.add_space(spec.spaces[0])
    with pytest.raises(ArchbenchError, match="argument 'scale'='big' must be"):
        check_space(registry.space("t"), registry)


def test_space_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["space", "list"]) == 0
    assert "58,593,750,000" in capsys.readouterr().out
    assert main(["space", "show", "picodet_neck"]) == 0
    out = capsys.readouterr().out
    assert "96 points" in out and "picodet_s.dense" in out and "picodet_neck-0f" in out
    assert main(["space", "show", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archbench: error: unknown space 'nope'") and "\n" not in err

"""Registry, selector and spec-file parsing."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

import archbench
from archbench.errors import ArchbenchError, SpecError, UnknownVariantError
from archbench.registry import Registry, build_registry, default_registry, parse_list
from archbench.specs import VariantSpec, load_spec_file, parse_spec_text

REQUIRED = [
    "esnet_s", "esnet_m", "esnet_l",
    "shufflenetv2_x0_5", "shufflenetv2_x1_0", "shufflenetv2_x1_5", "shufflenetv2_x2_0",
]


def names(specs: list[VariantSpec]) -> list[str]:
    return [s.name for s in specs]


def test_required_variants_registered() -> None:
    listed = archbench.list_variants()
    assert set(REQUIRED) <= set(listed)
    assert len(listed) == len(set(listed))


def test_family_expands_to_base_members_only() -> None:
    reg = default_registry()
    assert names(reg.select("esnet")) == ["esnet_s", "esnet_m", "esnet_l"]
    assert names(reg.select("shufflev2")) == REQUIRED[3:]
    assert names(reg.select("shufflenetv2")) == REQUIRED[3:]


def test_selector_order_exact_then_family_then_wildcard_and_dedup() -> None:
    reg = default_registry()
    assert names(reg.select("esnet_m, esnet")) == ["esnet_m", "esnet_s", "esnet_l"]
    assert names(reg.select("esnet_m.*")) == ["esnet_m.nose", "esnet_m.dw", "esnet_m.relu"]
    assert names(reg.select("*.ghost")) == [f"{n}.ghost" for n in REQUIRED[3:]]
    assert names(reg.select(["picodet"])) == [
        "picodet_s", "picodet_m", "picodet_l", "picodet_shufflenetv2",
    ]


def test_unknown_token_named_with_suggestions() -> None:
    reg = default_registry()
    with pytest.raises(UnknownVariantError, match=r"unknown variant 'esnet_xl'; did you mean .*esnet_l"):
        reg.select("esnet_s,esnet_xl")
    with pytest.raises(UnknownVariantError, match=r"pattern 'foo\*' matches no variant"):
        reg.select("foo*")


def test_empty_and_malformed_selections() -> None:
    reg = default_registry()
    with pytest.raises(ArchbenchError, match="empty variant selection"):
        reg.select(" ")
    with pytest.raises(ArchbenchError, match="empty item"):
        parse_list("esnet_s,,esnet_m")


def test_list_variants_pattern() -> None:
    assert archbench.list_variants("esnet_?") == ["esnet_s", "esnet_m", "esnet_l"]
    assert "esnet_m.nose" in archbench.list_variants("esnet")
    assert archbench.list_variants("picodet_*") == [
        n for n in archbench.list_variants() if n.startswith("picodet_")
    ]


def test_duplicate_registration_raises() -> None:
    reg = Registry()
    spec = VariantSpec("a", "fam", "backbone", "esnet")
    reg.add(spec)
    with pytest.raises(SpecError, match="'a' is already registered"):
        reg.add(spec)
    with pytest.raises(SpecError, match="'fam' is already registered"):
        reg.add(VariantSpec("b", "fam2", "backbone", "esnet", aliases=("fam",)))


def test_ablation_derives_from_base_without_copying() -> None:
    reg = default_registry()
    base, nose = reg.get("esnet_m"), reg.get("esnet_m.nose")
    assert nose.base == "esnet_m"
    assert dict(nose.args) == {**base.args, "se": False}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[variant]]\nname = "x"\nfamily = "f"\nkind = "backbone"\nbuilder = "esnet"\nwidth = 3\n',
         r"bad.toml: variant x: unknown key 'width'"),
        ('[[variant]]\nname = "x"\nfamily = "f"\nkind = "backbone"\nbuilder = 7\n',
         r"bad.toml: variant x: key 'builder' must be str, got int"),
        ('[[variant]]\nname = "x"\nfamily = "f"\nkind = "blob"\nbuilder = "esnet"\n',
         r"variant x: key 'kind' must be one of backbone, neck, detector"),
        ('[[variant]]\nname = "x"\nfamily = "f"\nkind = "backbone"\n', r"variant x: missing required key 'builder'"),
        ("[[variant]\n", r"bad.toml: not valid TOML"),
        ('[[varient]]\nname = "x"\n', r"unknown top-level key 'varient'"),
        ('[[variant]]\nname = "x"\nfamily = "f"\nkind = "backbone"\nbuilder = "esnet"\n'
         '[[ablation]]\nsuffix = "y"\nfamily = "f"\nargs = { se = false }\nonly = ["z"]\n',
         r"ablation y: key 'only' names unknown variants \['z'\]"),
    ],
)
def test_bad_spec_files_name_file_variant_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec_file(_write(tmp_path, text))


def test_spec_file_binary_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec_file(path)
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec_file(tmp_path / "missing.toml")


def test_entry_point_plugins_add_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = metadata.EntryPoint(name="demo", value="tests.plugin_demo:variants", group="archbench.variants")

    def fake_entry_points(group: str) -> list[metadata.EntryPoint]:
        return [ep] if group == "archbench.variants" else []

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    reg = build_registry([parse_spec_text(
        '[[variant]]\nname = "esnet_s"\nfamily = "esnet"\nkind = "backbone"\nbuilder = "esnet"\n'
        "args = { scale = 0.75 }\n", "inline")])
    assert names(reg.select("demo")) == ["demo_tiny"]
    model = archbench.create_model("demo_tiny", registry=reg)
    assert sum(p.numel() for p in model.parameters()) == 3 * 8 * 9 + 2 * 8

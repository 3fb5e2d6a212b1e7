"""Port group names and the ownership marker (``networking_dvs_fabric.vcenter.naming``)."""
from __future__ import annotations

import uuid

import pytest

from networking_dvs_fabric.vcenter import naming

NET_ID = "0f8e2c1a-4b7d-4e4e-9a51-1c2d3e4f5a6b"


def name(network_name: str, fmt: str = naming.DEFAULT_FORMAT, **kw: str) -> str:
    values = {"network_id": NET_ID, "dvs_name": "DVS0", "physical_network": "physnet-dvs"}
    values.update(kw)
    return naming.port_group_name(fmt, network_name=network_name, **values)


# -- check_format ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [
    naming.DEFAULT_FORMAT,
    "{network_id}",
    "{physical_network}-{dvs_name}-{network_name}-{network_id}",
    "os-{network_id}-{network_name}",
    "{network_name} ({network_id})",
])
def test_check_format_accepts(fmt: str) -> None:
    naming.check_format(fmt)


@pytest.mark.parametrize("fmt, message", [
    ("{network_name}", "must contain {network_id}"),
    ("plain", "must contain {network_id}"),
    ("{network_id}-{tenant}", "unknown field(s) tenant"),
    ("{project_id}{network_id}{zone}", "unknown field(s) project_id, zone"),
    ("{}-{network_id}", "unknown field(s)"),
    ("{network_id", "port_group_name_format '{network_id'"),
    ("{network_id}}", "port_group_name_format"),
    ("x" * 45 + "{network_id}", "longer than 80 characters"),
])
def test_check_format_rejects_with_a_message_naming_the_problem(fmt: str, message: str) -> None:
    with pytest.raises(naming.NameFormatError) as info:
        naming.check_format(fmt)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_check_format_limit_is_exactly_80() -> None:
    naming.check_format("x" * 44 + "{network_id}")          # 44 + 36 = 80
    with pytest.raises(naming.NameFormatError):
        naming.check_format("x" * 45 + "{network_id}")


def test_unknown_fields_list_the_known_ones() -> None:
    with pytest.raises(naming.NameFormatError) as info:
        naming.check_format("{net}-{network_id}")
    for field in ("dvs_name", "network_id", "network_name", "physical_network"):
        assert field in str(info.value)


# -- names -------------------------------------------------------------------------
def test_default_name() -> None:
    assert name("web") == f"web-{NET_ID}"


def test_all_fields() -> None:
    fmt = "{physical_network}/{dvs_name}:{network_name}:{network_id}"
    # Unsafe characters in the format itself are the operator's choice; values are cleaned.
    assert name("a/b", fmt) == f"physnet-dvs/DVS0:a_b:{NET_ID}"


@pytest.mark.parametrize("raw, clean", [
    ("a/b", "a_b"),
    ("a\\b", "a_b"),
    ("100%", "100_"),
    ("tab\there", "tab_here"),
    ("new\nline", "new_line"),
    ("nul\x00", "nul_"),
    ("del\x7f", "del_"),
    ("  padded  ", "padded"),
    ("it's \"quoted\"", "it's \"quoted\""),
    ("e\u0301t\u00e9", "\u00e9t\u00e9"),           # NFC: decomposed e + accent -> é
    ("網絡", "網絡"),
])
def test_network_name_cleaned(raw: str, clean: str) -> None:
    assert name(raw) == f"{clean}-{NET_ID}"


@pytest.mark.parametrize("length", [0, 1, 43, 44, 45, 100, 255])
@pytest.mark.parametrize("char", ["n", "網", "/"])
def test_long_names_shortened_to_80_keeping_the_uuid(length: int, char: str) -> None:
    result = name(char * length)
    assert len(result) <= naming.MAX_NAME
    assert result.endswith(f"-{NET_ID}")
    assert "/" not in result
    if length <= naming.MAX_NAME - len(NET_ID) - 1:
        assert len(result) == length + len(NET_ID) + 1


def test_shortening_strips_trailing_space_at_the_cut() -> None:
    result = name("a" * 42 + " " + "b" * 100)
    assert result == "a" * 42 + f"-{NET_ID}"


def test_same_long_name_distinct_networks_distinct_names() -> None:
    long = "same" * 64
    other = str(uuid.uuid4())
    assert name(long) != name(long, network_id=other)
    assert name(long)[:-36] == name(long, network_id=other)[:-36]


def test_shortening_with_other_fields() -> None:
    fmt = "{physical_network}-{network_name}-{network_id}"
    result = name("x" * 200, fmt, physical_network="p" * 30)
    assert len(result) == naming.MAX_NAME
    assert result.startswith("p" * 30 + "-")
    assert result.endswith(NET_ID)


def test_render_without_shortening_keeps_everything() -> None:
    result = naming.render(naming.DEFAULT_FORMAT, network_name="n" * 100, network_id=NET_ID,
                           dvs_name="", physical_network="", shorten=False)
    assert len(result) == 100 + 1 + 36


# -- the ownership marker -------------------------------------------------------------
def test_marker_round_trip() -> None:
    marker = naming.marker(NET_ID)
    assert marker.startswith(naming.MARKER_PREFIX)
    assert NET_ID in marker
    assert naming.owner_network(marker) == NET_ID


def test_marker_found_inside_a_longer_description() -> None:
    text = f"edited by an admin; {naming.marker(NET_ID)}; do not touch"
    assert naming.owner_network(text) == NET_ID


def test_marker_uuid_is_lowercased() -> None:
    assert naming.owner_network(naming.marker(NET_ID.upper())) == NET_ID


@pytest.mark.parametrize("description", [
    None, "", "made by hand", NET_ID, f"network-id={NET_ID}",
    f"managed-by=someone-else network-id={NET_ID}",
    f"{naming.MARKER_PREFIX} network-id=not-a-uuid",
])
def test_no_marker_no_owner(description: str | None) -> None:
    assert naming.owner_network(description) is None

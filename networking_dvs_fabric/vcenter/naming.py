"""Port group names and the ownership marker.

A name holds the network UUID (Nova's last-resort lookup matches on it) and is
at most 80 characters whatever the network is called.  The marker, kept in the
port group's description, is how the project knows a port group is its own.
"""
from __future__ import annotations

import re
import string
import unicodedata

MAX_NAME = 80
DEFAULT_FORMAT = "{network_name}-{network_id}"
# Used when the configured name is taken in the datacenter by a port group of
# another DVS (port group names are unique per datacenter, not per DVS).
DVS_QUALIFIED_FORMAT = "{network_name}-{dvs_name}-{network_id}"
MARKER_PREFIX = "managed-by=networking-dvs-fabric"
# Since issue 12 the marker names the deployment that made the port group too;
# earlier versions wrote it without (a "legacy" marker, adopted by the deployment
# whose Neutron has the network).
_MARKER_RE = re.compile(re.escape(MARKER_PREFIX) + r"(?: deployment=([0-9a-fA-F-]{1,64}))?"
                        r" network-id=([0-9a-fA-F-]{36})")
# Since issue 13 a network has one port group per set of its ports (security groups,
# port security, admin state: ``security/model.set_key``); the marker names the set,
# except for the ``open`` one, whose port group is the network's port group of old.
_SET_RE = re.compile(re.escape(MARKER_PREFIX) + r"[^;]*? network-id=[0-9a-fA-F-]{36}"
                     r" set=([a-z0-9-]{1,32})")
OPEN_SET = "open"
# ... and the fingerprint of the policy written with it (``security/model.fingerprint``).
_POLICY_RE = re.compile(re.escape(MARKER_PREFIX) + r"[^;]*? policy=([0-9a-f]{12})")
# vCenter escapes these in names ("%2f"), so a name with them reads back different.
_UNSAFE = re.compile(r"[/\\%\x00-\x1f\x7f]")
_FIELDS = {"network_name", "network_id", "dvs_name", "physical_network"}


class NameFormatError(ValueError):
    pass


def check_format(fmt: str) -> None:
    """Reject a port_group_name_format that cannot give valid, unique names."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None}
    except ValueError as exc:
        raise NameFormatError(f"port_group_name_format {fmt!r}: {exc}") from exc
    unknown = fields - _FIELDS
    if unknown:
        raise NameFormatError(f"port_group_name_format {fmt!r}: unknown field(s) "
                              f"{', '.join(sorted(unknown))}; known: {', '.join(sorted(_FIELDS))}")
    if "network_id" not in fields:
        raise NameFormatError(f"port_group_name_format {fmt!r} must contain {{network_id}}")
    fixed = render(fmt, network_name="", network_id="0" * 36, dvs_name="", physical_network="",
                   shorten=False)
    if len(fixed) > MAX_NAME:
        raise NameFormatError(f"port_group_name_format {fmt!r} is longer than {MAX_NAME} "
                              "characters even with an empty network name")


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text or "")
    return _UNSAFE.sub("_", text).strip()


def render(fmt: str, *, network_name: str, network_id: str, dvs_name: str,
           physical_network: str, shorten: bool = True) -> str:
    values = {"network_name": _clean(network_name), "network_id": network_id,
              "dvs_name": _clean(dvs_name), "physical_network": _clean(physical_network)}
    name = fmt.format(**values)
    if shorten and len(name) > MAX_NAME:
        fixed = len(fmt.format(**{**values, "network_name": ""}))
        budget = max(0, MAX_NAME - fixed)
        values["network_name"] = values["network_name"][:budget].rstrip()
        name = fmt.format(**values)[:MAX_NAME]
    return name


def port_group_name(fmt: str, *, network_name: str, network_id: str, dvs_name: str,
                    physical_network: str, set_key: str = OPEN_SET) -> str:
    """The name of a network's port group; a set other than ``open`` is a suffix
    (the network name is shortened for it, never the UUID or the set)."""
    if set_key != OPEN_SET:
        fmt = f"{fmt}-{set_key}"
    return render(fmt, network_name=network_name, network_id=network_id,
                  dvs_name=dvs_name, physical_network=physical_network)


def marker(network_id: str, deployment: str | None = None,
           set_key: str = OPEN_SET, policy: str | None = None) -> str:
    """The ownership marker; without ``deployment`` the legacy form (no identity)."""
    text = f"{MARKER_PREFIX} network-id={network_id}" if deployment is None else \
        f"{MARKER_PREFIX} deployment={deployment} network-id={network_id}"
    if set_key != OPEN_SET:
        text = f"{text} set={set_key}"
    return text if policy is None else f"{text} policy={policy}"


def parse_policy(description: str | None) -> str | None:
    """The fingerprint of the policy last written with the marker, if any."""
    match = _POLICY_RE.search(description or "")
    return match.group(1) if match else None


def parse_set(description: str | None) -> str:
    """The set a marked port group is for (``open`` when the marker names none)."""
    match = _SET_RE.search(description or "")
    return match.group(1) if match else OPEN_SET


def parse_marker(description: str | None) -> tuple[str, str | None] | None:
    """(network UUID, deployment id or None for a legacy marker), or None: not ours."""
    match = _MARKER_RE.search(description or "")
    if not match:
        return None
    return match.group(2).lower(), (match.group(1).lower() if match.group(1) else None)


def owner_network(description: str | None) -> str | None:
    """The network UUID in an ownership marker (any deployment's), or None."""
    parsed = parse_marker(description)
    return parsed[0] if parsed else None

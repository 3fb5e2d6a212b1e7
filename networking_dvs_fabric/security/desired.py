"""The policy a set's port group must hold: Neutron's state, translated.

``open`` and ``blocked`` sets are fixed policies; a security group set's is made
by ``translate.policy_for_set`` from what ``membership.set_inputs`` reads.
"""
from __future__ import annotations

from typing import Collection

from networking_dvs_fabric.security import membership, model, translate


def policy_for_set(context, network_id: str, set_key: str,
                   including: membership.PortSet | None = None,
                   max_rules: int = translate.DEFAULT_MAX_RULES
                   ) -> model.PortGroupPolicy | None:
    """The policy of the network's port group of ``set_key``; None: no port of the set
    on the network any more (its port group is for the release, not for a new policy).

    ``max_rules`` is ``[ml2_vsphere] max_filter_rules`` (``BackendSettings``); more
    raises ``translate.PolicyTooLarge``.
    """
    if set_key == model.OPEN:
        return model.OPEN_POLICY
    if set_key == model.BLOCKED:
        return model.BLOCKED_POLICY
    inputs = membership.set_inputs(context, network_id, set_key, including)
    if inputs is None:
        return None
    return translate.policy_for_set(inputs.rules, inputs.own_addresses,
                                    inputs.member_addresses, inputs.address_groups,
                                    foreign_mac=inputs.foreign_mac, max_rules=max_rules)


def policies_for_network(context, network_id: str,
                         max_rules: int = translate.DEFAULT_MAX_RULES,
                         members_seen: dict[str, list[str]] | None = None,
                         about: Collection[str] | None = None
                         ) -> dict[str, model.PortGroupPolicy | translate.PolicyTooLarge]:
    """The policy of each security group set with ports on the network (or why it cannot
    be made); ``open`` and ``blocked`` are fixed and not listed.  One read of Neutron
    (``members_seen``, ``about``: see ``membership.network_inputs``)."""
    found: dict[str, model.PortGroupPolicy | translate.PolicyTooLarge] = {}
    for key, inputs in membership.network_inputs(context, network_id, members_seen,
                                                 about).items():
        try:
            found[key] = translate.policy_for_set(
                inputs.rules, inputs.own_addresses, inputs.member_addresses,
                inputs.address_groups, foreign_mac=inputs.foreign_mac, max_rules=max_rules)
        except translate.PolicyTooLarge as exc:
            found[key] = exc
    return found

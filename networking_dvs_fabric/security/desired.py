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
    (``members_seen``, ``about``: see ``membership.networks_inputs``)."""
    return policies_for_networks(context, [network_id], max_rules, members_seen,
                                 about).get(network_id, {})


def policies_for_networks(context, network_ids: Collection[str],
                          max_rules: int = translate.DEFAULT_MAX_RULES,
                          members_seen: dict[str, list[str]] | None = None,
                          about: Collection[str] | None = None
                          ) -> dict[str, dict[str, model.PortGroupPolicy |
                                              translate.PolicyTooLarge]]:
    """:func:`policies_for_network` of many networks, in one read of Neutron."""
    found: dict[str, dict[str, model.PortGroupPolicy | translate.PolicyTooLarge]] = {}
    for network_id, sets in membership.networks_inputs(context, network_ids, members_seen,
                                                       about).items():
        for key, inputs in sets.items():
            try:
                policy: model.PortGroupPolicy | translate.PolicyTooLarge = \
                    translate.policy_for_set(
                        inputs.rules, inputs.own_addresses, inputs.member_addresses,
                        inputs.address_groups, foreign_mac=inputs.foreign_mac,
                        max_rules=max_rules)
            except translate.PolicyTooLarge as exc:
                policy = exc
            found.setdefault(network_id, {})[key] = policy
    return found

"""Neutron changes that touch port group filters, written down as journal entries.

In the transaction of the change (precommit), like every other intent of the
project: nothing is lost when a process dies after the API answered.

* a rule created or deleted: every network with a port in its group gets a
  ``port_group_policy`` entry per DVS (the policy worker rewrites the filters of
  that network's port groups whose policy changed - one reconfigure per port
  group, however many ports);
* a port's addresses or groups changing, a port joining or leaving: a
  ``security_group_members`` entry per group for its own network; the worker adds
  the networks whose port groups name the group as remote group (a query and one
  row per network that the API's transaction does not pay for).  A port without
  any address, before or after, changes no group's member addresses: only its own
  network's ``port_group_policy`` entry;
* a port's *set* changing (groups, port security, admin state): a ``port_set``
  entry - the worker moves its NIC to the set's port group;
* a rule the DVS cannot express is refused before it is created.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from neutron_lib.callbacks import events, registry, resources
from neutron_lib.db import api as db_api

from networking_dvs_fabric import names
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.security import desired, membership, translate

LOG = logging.getLogger(__name__)

ALL_SETS = "sync"     # an entry's operation: every set of the network, not one group's

# What of a port, changed, changes a port group's filter.
_FILTER_INPUTS = ("fixed_ips", "allowed_address_pairs", "security_groups",
                  "port_security_enabled", "admin_state_up", "mac_address")


def record_networks(context, network_ids: Iterable[str], dvs_names: Iterable[str],
                    groups: Iterable[str] = (),
                    resource_type: str = names.RESOURCE_PORT_GROUP_POLICY) -> None:
    """One entry per (network, DVS) and group; joins the caller's transaction.

    Each row's operation names a security group the change is about (the worker then
    looks only at the sets holding it or naming it as remote group), or ``sync``: all
    of the network's sets.
    """
    operations = sorted(set(groups)) or [ALL_SETS]
    for network_id in sorted(set(network_ids)):
        for dvs_name in sorted(set(dvs_names)):
            for operation in operations:
                store.record(context, resource_type,
                             names.port_group_resource(network_id, dvs_name), operation)


def record_port_set(context, port_id: str) -> None:
    store.record(context, names.RESOURCE_PORT_SET, port_id)


def _has_addresses(port: dict) -> bool:
    """Whether the port brings any address to the member sets of its groups (fixed IPs,
    allowed address pairs: what ``membership.addresses`` reads)."""
    return bool(port.get("fixed_ips")) or any(
        pair.get("ip_address") for pair in port.get("allowed_address_pairs") or ())


def filter_inputs_changed(original: dict, current: dict) -> bool:
    return any(_norm(original.get(k)) != _norm(current.get(k)) for k in _FILTER_INPUTS)


def _norm(value):
    if isinstance(value, list):
        return sorted(repr(v) for v in value)
    return value


def port_changed(context, original: dict | None, current: dict | None,
                 dvs_names: Iterable[str]) -> None:
    """Record what a port's create, update or delete means for filters (precommit)."""
    ports = [p for p in (original, current) if p]
    if not ports:
        return
    if original and current and not filter_inputs_changed(original, current):
        return
    groups = {g for p in ports for g in (p.get("security_groups") or ())}
    own = {p["network_id"] for p in ports}
    if groups and any(_has_addresses(p) for p in ports):
        # Its addresses are in its own network's filters (its sets' sources) and in
        # those, anywhere, of sets whose rules name its groups as remote (the worker
        # finds those) - not in the filters its groups' members have elsewhere.
        record_networks(context, own, dvs_names, groups, names.RESOURCE_GROUP_MEMBERS)
    elif groups:
        # No address before or after (a network without subnets): no remote group's
        # member addresses change, so no filter elsewhere does; only its own network's
        # sets of these groups are looked at (a port of Neutron's default group would
        # otherwise have every network of the project planned again).
        record_networks(context, own, dvs_names, groups)
    elif original and current:
        # In no group on either side (admin state of a port in none): a port in no
        # group adds nothing to any filter, but its set changed: every set of its
        # own network.
        record_networks(context, own, dvs_names)


class Subscriber:
    """The security group and address group callbacks of one driver."""

    def __init__(self, dvs_names: Callable[[], Iterable[str]],
                 wake: Callable[[], None],
                 max_rules: int = translate.DEFAULT_MAX_RULES) -> None:
        self._dvs_names = dvs_names
        self._wake = wake
        self._max_rules = max_rules

    def subscribe(self) -> None:
        registry.subscribe(self.rule_before_create, resources.SECURITY_GROUP_RULE,
                           events.BEFORE_CREATE)
        registry.subscribe(self.rule_precommit_create, resources.SECURITY_GROUP_RULE,
                           events.PRECOMMIT_CREATE)
        registry.subscribe(self.rule_precommit_delete, resources.SECURITY_GROUP_RULE,
                           events.PRECOMMIT_DELETE)
        for event in (events.AFTER_CREATE, events.AFTER_DELETE):
            registry.subscribe(self.rule_committed, resources.SECURITY_GROUP_RULE, event)
        for event in (events.AFTER_UPDATE, events.AFTER_DELETE):
            registry.subscribe(self.address_group_changed, resources.ADDRESS_GROUP, event)

    def rule_committed(self, resource, event, trigger, payload) -> None:
        self._wake()

    def rule_before_create(self, resource, event, trigger, payload) -> None:
        rule = payload.latest_state
        refused = translate.not_expressible(rule)
        if refused is not None:
            LOG.info("vsphere_dvs: refused security group rule (%(rule)s): %(reason)s",
                     {"rule": _describe(rule), "reason": refused})
            raise refused

    def rule_precommit_create(self, resource, event, trigger, payload) -> None:
        rule = payload.latest_state
        self._check_sizes(payload.context, rule)
        self._record_groups(payload.context, [rule["security_group_id"]])

    def _check_sizes(self, context, rule: dict) -> None:
        """Refuse a rule that makes some set's filter larger than ``max_filter_rules``.

        Runs in the rule's own transaction, the rule already written: each set of
        ports with its group, on each network it has ports on, is translated as the
        worker would.  Raises ``translate.PolicyTooLarge`` (Neutron answers 409 with
        its text).
        """
        group = rule["security_group_id"]
        for network_id in sorted(membership.networks_of_groups(context, [group],
                                                               through_remote=False)):
            keys = {s.key for s in membership.port_sets(context, network_id).values()
                    if group in s.security_group_ids and s.port_security}
            for key in sorted(keys):
                desired.policy_for_set(context, network_id, key, max_rules=self._max_rules)

    def rule_precommit_delete(self, resource, event, trigger, payload) -> None:
        group = (payload.metadata or {}).get("security_group_id")
        if group:
            self._record_groups(payload.context, [group])

    def address_group_changed(self, resource, event, trigger, payload) -> None:
        context = payload.context
        with db_api.CONTEXT_WRITER.using(context):
            groups = membership.groups_naming_address_group(context, payload.resource_id)
            self._record_groups(context, groups)
        self._wake()

    def _record_groups(self, context, groups: Iterable[str]) -> None:
        groups = list(groups)
        networks = membership.networks_of_groups(context, groups, through_remote=False)
        if networks:
            record_networks(context, networks, self._dvs_names(), groups)


def _describe(rule: dict) -> str:
    parts = [rule.get("direction") or "?", rule.get("ethertype") or "?",
             str(rule.get("protocol") or "any")]
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if low is not None or high is not None:
        parts.append(f"{low}:{high}")
    return " ".join(parts) + f" of security group {rule.get('security_group_id')}"

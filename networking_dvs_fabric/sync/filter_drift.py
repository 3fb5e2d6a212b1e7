"""What differs between the policy a port group must hold and the one vCenter has.

For the audit's ``filter_drift``: in the operator's words, vCenter's names for the
flags, counts for the rules (a port group may carry a thousand; the rules
themselves are the translation's, ``security/translate.py``).
"""
from __future__ import annotations

from networking_dvs_fabric.security.model import FilterRule, PortGroupPolicy

# PortGroupPolicy's flags, by the name vCenter shows them under.
_FLAGS = (("forged_transmits", "securityPolicy.forgedTransmits"),
          ("mac_changes", "securityPolicy.macChanges"),
          ("allow_promiscuous", "securityPolicy.allowPromiscuous"),
          ("blocked", "blocked"))


def _unmatched(rules: tuple[FilterRule, ...], others: tuple[FilterRule, ...]) -> int:
    """How many of ``rules`` have no rule of the same match in ``others``."""
    left = list(others)
    count = 0
    for rule in rules:
        found = next((i for i, other in enumerate(left) if rule.same_match(other)), None)
        if found is None:
            count += 1
        else:
            del left[found]
    return count


def _rules(want: PortGroupPolicy, have: PortGroupPolicy) -> str | None:
    if want.filtered != have.filtered:
        return (f"traffic filter {'on' if have.filtered else 'off'} with "
                f"{len(have.rules)} rules, expected {'on' if want.filtered else 'off'} "
                f"with {len(want.rules)}")
    if len(want.rules) == len(have.rules) and \
            all(a.same_match(b) for a, b in zip(want.rules, have.rules)):
        return None
    missing, extra = _unmatched(want.rules, have.rules), _unmatched(have.rules, want.rules)
    if not missing and not extra:
        return f"the {len(have.rules)} filter rules are in another order (first match wins)"
    return (f"{len(have.rules)} filter rules, expected {len(want.rules)} ({missing} "
            f"missing or changed, {extra} not wanted)")


def policy_difference(want: PortGroupPolicy, have: PortGroupPolicy | None) -> str:
    """What ``have`` (read from vCenter) lacks of ``want``, one clause per difference."""
    if have is None:
        return "no port settings read"
    found = []
    rules = _rules(want, have)
    if rules is not None:
        found.append(rules)
    for attribute, name in _FLAGS:
        wanted, actual = getattr(want, attribute), getattr(have, attribute)
        if wanted != actual:
            found.append(f"{name} {str(actual).lower()}, expected {str(wanted).lower()}")
    return "; ".join(found) or "differs"

"""Which of our networks hold a (port, VLAN) a batch now wants, and what they are handed
(pure computation: ``fabric/desired.py``'s ``holders`` and ``releases``)."""
from networking_dvs_fabric.fabric.api import NetworkOnLeaf
from networking_dvs_fabric.fabric.desired import holders, releases

MAC = "02:00:00:00:00:0a"


def _net(network_id, vni, *bindings, macs=(), flood=()):
    return NetworkOnLeaf(network_id, vni, frozenset(bindings), frozenset(macs),
                         frozenset(flood))


# leaf1: "old" holds (swp1, 100) and (swp2, 200); "other" holds (swp3, 300).
CURRENT = {"leaf1": {"old": _net("old", 5001, ("swp1", 100), ("swp2", 200),
                                 macs=[(MAC, "192.0.2.2")], flood=["192.0.2.2"]),
                     "other": _net("other", 5003, ("swp3", 300))},
           "leaf2": {}}
# The batch: "new" was given VLAN 100 on the port "old" had it on.
BATCH = {"leaf1": {"new": _net("new", 5002, ("swp1", 100))}, "leaf2": {"new": None}}


def test_a_network_outside_the_batch_holding_a_wanted_binding_is_a_holder():
    assert holders(BATCH, CURRENT) == {"old"}
    # Inside the batch it is no holder: the batch's own call already names it.
    assert holders({"leaf1": {**BATCH["leaf1"], "old": None}}, CURRENT) == set()
    assert holders({"leaf1": {"new": _net("new", 5002, ("swp9", 100))}}, CURRENT) == set()


def test_a_holder_that_needs_nothing_on_the_leaf_leaves_it():
    theirs = {"leaf1": {"old": None}, "leaf2": {"old": None}}
    assert releases(BATCH, theirs, CURRENT) == {"leaf1": {"old": None}, "leaf2": {}}


def test_a_holder_still_needed_there_keeps_the_rest_and_gains_nothing():
    # Neutron gave "old" VLAN 400 now, which it has not got on the leaf yet.
    theirs = {"leaf1": {"old": _net("old", 5001, ("swp2", 200), ("swp1", 400))}}
    got = releases(BATCH, theirs, CURRENT)["leaf1"]["old"]
    assert got == _net("old", 5001, ("swp2", 200), macs=[(MAC, "192.0.2.2")],
                       flood=["192.0.2.2"])


def test_a_holder_still_wanting_the_binding_is_not_named():
    # Neutron says both networks have VLAN 100 there: a true conflict, refused by the
    # leaf as before (the holder is not in the call).
    theirs = {"leaf1": {"old": _net("old", 5001, ("swp1", 100), ("swp2", 200))}}
    assert releases(BATCH, theirs, CURRENT) == {"leaf1": {}, "leaf2": {}}


def test_a_holder_releasing_one_binding_and_still_wanting_another_keeps_that_one():
    batch = {"leaf1": {"new": _net("new", 5002, ("swp1", 100), ("swp2", 200))}}
    theirs = {"leaf1": {"old": _net("old", 5001, ("swp2", 200))}}
    got = releases(batch, theirs, CURRENT)["leaf1"]["old"]
    # It keeps (swp2, 200): the leaf then refuses the one network that wants it too.
    assert got.bindings == frozenset({("swp2", 200)})

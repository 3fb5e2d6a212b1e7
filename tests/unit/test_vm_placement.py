"""Which NIC carries which port: Nova's claims read from a VM and checked (``vm_state``).

Built from pyVmomi's own value classes, as vCenter returns them, laid out as Nova's
VMware driver leaves a VM: ``nvp.iface-id.N`` with N the lowest free index (``free``
after a detach), ``nvp.vm-uuid``, cards in the order they were added, a template's
card before Neutron's.
"""
from __future__ import annotations

from pyVmomi import vim

from networking_dvs_fabric.vcenter.vm_state import (PortFacts, VmState, claims_of, nics_of,
                                                    place, vm_uuid_of)

DVS = "50 00 11 22"
CARD = vim.vm.device.VirtualEthernetCard
INSTANCE = "8a7d-instance"
# Our port groups and their networks; "dvportgroup-9" is the simulator's own.
NETWORK_OF = {"dvportgroup-11": "net-a", "dvportgroup-12": "net-b",
              "dvportgroup-13": "net-c"}.get


def card(mac: str, pg: str, model: type = vim.vm.device.VirtualE1000) -> object:
    backing = CARD.DistributedVirtualPortBackingInfo(
        port=vim.dvs.PortConnection(switchUuid=DVS, portgroupKey=pg))
    return model(macAddress=mac, addressType="manual", backing=backing)


def option(key: str, value: str) -> object:
    return vim.option.OptionValue(key=key, value=value)


def vm(devices: list, extra: list) -> VmState:
    return VmState("vm-7", "web-7", "DC0_C0_H1", True, nics_of(devices), claims_of(extra),
                   vm_uuid_of(extra))


PORTS = {"port-a": PortFacts("fa:16:3e:00:00:0a", "net-a", INSTANCE),
         "port-b": PortFacts("fa:16:3e:00:00:0b", "net-b", INSTANCE),
         "port-c": PortFacts("fa:16:3e:00:00:0c", "net-c", INSTANCE)}


def carried(state: VmState) -> list[tuple[str, str | None]]:
    return [(nic.mac, nic.iface_id) for nic in state.nics]


def test_a_template_card_first_does_not_take_the_port():
    state = vm([card("00:50:56:0a:0b:0c", "dvportgroup-9"),
                card("fa:16:3e:00:00:0a", "dvportgroup-11")],
               [option("nvp.vm-uuid", INSTANCE), option("nvp.iface-id.0", "port-a")])
    placed, refused = place(state, PORTS, NETWORK_OF)
    assert carried(placed) == [("00:50:56:0a:0b:0c", None), ("fa:16:3e:00:00:0a", "port-a")]
    assert refused == {}


def test_attach_a_attach_b_detach_a_attach_c():
    # C took the freed index 0, but it is the last card.
    state = vm([card("fa:16:3e:00:00:0b", "dvportgroup-12"),
                card("fa:16:3e:00:00:0c", "dvportgroup-13", vim.vm.device.VirtualVmxnet3)],
               [option("nvp.vm-uuid", INSTANCE), option("nvp.iface-id.0", "port-c"),
                option("nvp.iface-id.1", "port-b")])
    assert state.claims == ("port-c", "port-b")
    placed, refused = place(state, PORTS, NETWORK_OF)
    assert carried(placed) == [("fa:16:3e:00:00:0b", "port-b"), ("fa:16:3e:00:00:0c", "port-c")]
    assert refused == {}


def test_freed_keys_claim_nothing_and_lowest_index_comes_first():
    extra = [option("nvp.iface-id.2", "port-c"), option("nvp.iface-id.0", "free"),
             option("nvp.iface-id.1", "port-b"), option("nvp.iface-id.x", "port-a"),
             option("guestinfo.other", "port-a")]
    assert claims_of(extra) == ("port-b", "port-c")
    assert vm_uuid_of(extra) is None
    assert vm_uuid_of([option("nvp.vm-uuid", INSTANCE)]) == INSTANCE


def test_a_claim_from_another_instances_vm_is_refused():
    state = vm([card("fa:16:3e:00:00:0a", "dvportgroup-11")],
               [option("nvp.vm-uuid", "someone-else"), option("nvp.iface-id.0", "port-a")])
    placed, refused = place(state, PORTS, NETWORK_OF)
    assert carried(placed) == [("fa:16:3e:00:00:0a", None)]
    assert refused == {"port-a": f"nvp.vm-uuid someone-else is not the port's device_id "
                                 f"{INSTANCE}"}


def test_a_claim_without_the_ports_mac_or_on_another_networks_group_is_refused():
    state = vm([card("fa:16:3e:00:00:99", "dvportgroup-11"),       # not port-a's MAC
                card("fa:16:3e:00:00:0b", "dvportgroup-11")],      # port-b's MAC, net-a's group
               [option("nvp.vm-uuid", INSTANCE), option("nvp.iface-id.0", "port-a"),
                option("nvp.iface-id.1", "port-b")])
    placed, refused = place(state, PORTS, NETWORK_OF)
    assert [nic.iface_id for nic in placed.nics] == [None, None]
    assert refused == {
        "port-a": "no NIC has the port's MAC fa:16:3e:00:00:0a",
        "port-b": "the NIC with the port's MAC is on port group dvportgroup-11, not one of "
                  "network net-b"}


def test_ports_neutron_does_not_know_are_dropped_silently():
    state = vm([card("fa:16:3e:00:00:0a", "dvportgroup-11")],
               [option("nvp.iface-id.0", "port-of-another-cloud")])
    placed, refused = place(state, PORTS, NETWORK_OF)
    assert ([nic.iface_id for nic in placed.nics], refused) == ([None], {})


def test_without_vm_uuid_the_nic_checks_still_hold():
    state = vm([card("FA:16:3E:00:00:0A", "dvportgroup-11")],
               [option("nvp.iface-id.0", "port-a")])
    placed, refused = place(state, PORTS, NETWORK_OF)
    assert carried(placed) == [("fa:16:3e:00:00:0a", "port-a")] and refused == {}


def test_two_cards_of_one_mac_each_carry_the_port_of_their_network():
    # Neutron's MACs are unique per network only: ports of two networks may share one.
    ports = {"port-a": PortFacts("fa:16:3e:00:00:0a", "net-a", INSTANCE),
             "port-b": PortFacts("fa:16:3e:00:00:0a", "net-b", INSTANCE)}
    state = vm([card("fa:16:3e:00:00:0a", "dvportgroup-12"),
                card("fa:16:3e:00:00:0a", "dvportgroup-11")],
               [option("nvp.vm-uuid", INSTANCE), option("nvp.iface-id.0", "port-a"),
                option("nvp.iface-id.1", "port-b")])
    placed, refused = place(state, ports, NETWORK_OF)
    assert [nic.iface_id for nic in placed.nics] == ["port-b", "port-a"] and refused == {}

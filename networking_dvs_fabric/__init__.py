"""networking-dvs-fabric: Neutron ML2 drivers for a VMware DVS and a VXLAN leaf fabric."""

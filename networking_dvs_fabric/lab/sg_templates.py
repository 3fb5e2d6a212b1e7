"""Neutron's default security group rule templates, for a schema made without migrations.

On MariaDB the lab's schema comes from Neutron's migrations, and one of them
(2023.2 expand ``c33da356b165``) adds four templates every default security group
is made from: egress anywhere (IPv4, IPv6; for every new group too) and ingress from
the group's own members (IPv4, IPv6; default groups only).  The SQLite lab's schema
is made from the models, which carry no data: this adds the same four templates.

Run as ``python -m networking_dvs_fabric.lab.sg_templates DB_URL``; a schema that has
templates already is left alone.
"""
from __future__ import annotations

import sys

from neutron_lib import constants
from oslo_utils import uuidutils

# (direction, ethertype, remote_group_id, used in default groups, in other groups)
TEMPLATES = [
    (constants.EGRESS_DIRECTION, constants.IPv4, None, True, True),
    (constants.EGRESS_DIRECTION, constants.IPv6, None, True, True),
    (constants.INGRESS_DIRECTION, constants.IPv4, "PARENT", True, False),
    (constants.INGRESS_DIRECTION, constants.IPv6, "PARENT", True, False),
]


def add_templates(db_url: str) -> int:
    """Add the templates unless some exist; returns how many were added."""
    import sqlalchemy
    from sqlalchemy import orm

    from neutron.db.migration.models import head  # noqa: F401 - every model mapped
    from neutron.db.models.securitygroup_default_rules import SecurityGroupDefaultRule

    engine = sqlalchemy.create_engine(db_url)
    with orm.Session(engine) as session:
        if session.query(SecurityGroupDefaultRule.id).first() is not None:
            return 0
        for direction, ethertype, remote, in_default, in_other in TEMPLATES:
            session.add(SecurityGroupDefaultRule(
                id=uuidutils.generate_uuid(), direction=direction, ethertype=ethertype,
                remote_group_id=remote, used_in_default_sg=in_default,
                used_in_non_default_sg=in_other))
        session.commit()
    return len(TEMPLATES)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m networking_dvs_fabric.lab.sg_templates DB_URL",
              file=sys.stderr)
        return 2
    print(f"security group rule templates added: {add_templates(args[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The deployment's identity: which Neutron made an object in vCenter or on a leaf.

Two Neutron deployments may share one vCenter and one set of leaves (a test and a
production cloud, two regions).  Every object the project creates carries the id
of the deployment that made it, next to the ownership marker, and every part that
changes or deletes objects touches only its own deployment's.

The id is a UUID made the first time any part of the project needs it and kept
in Neutron's database (``dvs_fabric_settings``): nothing to configure, two
Neutrons with their own databases are told apart, a Neutron restored from a
backup keeps its id, and every process of one deployment (API workers, periodic
workers, ``dvs-fabric``) reads the same value.
"""
from __future__ import annotations

import uuid

from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc

from networking_dvs_fabric.db import models

SETTING = "deployment-id"


def _read(context) -> str | None:
    with db_api.CONTEXT_READER.using(context):
        row = context.session.query(models.Setting.value).filter(
            models.Setting.name == SETTING).first()
    return row.value if row else None


@db_api.retry_if_session_inactive()
def deployment_id(context) -> str:
    """This deployment's id, made and stored on first use (safe against a racing process)."""
    found = _read(context)
    if found:
        return found
    try:
        with db_api.CONTEXT_WRITER.using(context):
            context.session.add(models.Setting(name=SETTING, value=str(uuid.uuid4())))
    except db_exc.DBDuplicateEntry:
        pass                       # another process made it first: theirs is the id
    found = _read(context)
    if not found:
        raise RuntimeError("the deployment id was stored but cannot be read back")
    return found

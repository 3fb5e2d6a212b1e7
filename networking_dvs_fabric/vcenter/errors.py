"""Errors of the vCenter client, by kind: temporary ones are retried, permanent ones not.

Every error has ``temporary`` (and its opposite, ``permanent``), as the fabric's
``FabricError`` has; the workers decide on it: a journal entry that hits a
temporary error is retried with back-off, one that hits a permanent error is
marked failed (``dvs-fabric journal`` shows it with the message).

- **temporary**: retrying the same request later may work without anyone
  changing it - vCenter or the network to it is not usable right now, or the
  object is busy (another task, another writer, a host of the DVS not answering).
  Wrong password and untrusted certificate count here too: they fail *every*
  call alike until the configuration or vCenter is fixed, and then all the
  pending work must go through; failing each entry would bury the one log line
  that says what to fix.
- **permanent**: vCenter refused this request for a reason of its own (no
  privilege on this object, invalid argument or name, not supported, object
  gone): retrying it unchanged fails the same way, so it is reported instead.

Every fault vCenter raises (a pyVmomi ``vmodl.MethodFault``, from a call or as a
task's error) becomes one of these in ``VCenterSession`` (see ``faults.py`` for
the table): the special cases keep their own types (``NotAuthenticated`` is
a re-login, ``InvalidLogin`` -> :class:`VCenterAuthError`,
``ManagedObjectNotFound`` -> :class:`VCenterNotFound`), every other fault is a
:class:`VCenterTemporaryFault` or a :class:`VCenterPermanentFault`.  The rule
for a fault not in the table: **permanent**.  A fault wrongly taken as
permanent fails one journal entry, visibly, and nothing is lost: the periodic
port group sweep retries every unused port group on every pass, and ML2 and
Nova retry a failed binding.  A fault wrongly taken as temporary would be
retried for ever, unseen - the failure this rule exists to prevent.

``fault`` holds the pyVmomi fault behind an error (None when there was none),
so callers can still tell e.g. ``DuplicateName`` from other permanent faults.
"""
from __future__ import annotations

from typing import Any


class VCenterError(Exception):
    """Base: something about vCenter went wrong; the message says what."""

    temporary = False
    permanent = True
    fault: Any = None       # the pyVmomi fault behind it, if any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass sets either attribute (``temporary`` as FabricError does, or
        # ``permanent`` as older subclasses do); the other follows.
        super().__init_subclass__(**kwargs)
        if "temporary" in cls.__dict__:
            cls.permanent = not cls.temporary
        elif "permanent" in cls.__dict__:
            cls.temporary = not cls.permanent

    def is_fault(self, *fault_types: type) -> bool:
        """Is the vCenter fault behind this error one of ``fault_types``?"""
        return self.fault is not None and isinstance(self.fault, fault_types)


class VCenterUnreachable(VCenterError):
    """vCenter did not answer (refused, reset, timed out): temporary."""

    temporary = True


class VCenterAuthError(VCenterError):
    """vCenter refused the user name or password (temporary: see the module)."""

    temporary = True


class VCenterCertificateError(VCenterError):
    """vCenter's TLS certificate did not verify against the configured CA (temporary:
    see the module)."""

    temporary = True


class VCenterNotFound(VCenterError):
    """A datacenter, DVS, cluster or port group that was named does not exist."""


class VCenterTaskFailed(VCenterError):
    """A vCenter task ended in error without a fault to say which."""


class VCenterTaskTimeout(VCenterTaskFailed):
    """A vCenter task did not finish within task_timeout: it may still; retry later."""

    temporary = True


class VCenterFault(VCenterError):
    """A fault vCenter raised (``fault``) that none of the other types stands for."""


class VCenterTemporaryFault(VCenterFault):
    """A fault that retrying later may get past (ConcurrentAccess, TaskInProgress...)."""

    temporary = True


class VCenterPermanentFault(VCenterFault):
    """A fault that retrying the same request will not get past (NoPermission,
    InvalidArgument..., and any fault not known to be temporary)."""

    temporary = False


class PortGroupNotOwned(VCenterError):
    """A port group with the wanted name exists but was not made by this project."""


class PortGroupLimit(VCenterError):
    """A new port group would pass ``[ml2_vsphere] max_port_groups``."""


class PortGroupNameTaken(VCenterError):
    """vCenter refused the name (DuplicateName) but this DVS has no such port group:
    the name is used elsewhere in the datacenter (another DVS, a standard network)."""


class PortGroupInUse(VCenterError):
    """A port group is still used by VMs, so it is kept for now."""

    temporary = True

"""Errors of the vCenter client, by kind: temporary ones are retried, permanent ones not."""
from __future__ import annotations


class VCenterError(Exception):
    """Base: something about vCenter went wrong; the message says what."""

    permanent = True


class VCenterUnreachable(VCenterError):
    """vCenter did not answer (refused, reset, timed out): temporary."""

    permanent = False


class VCenterAuthError(VCenterError):
    """vCenter refused the user name or password."""


class VCenterCertificateError(VCenterError):
    """vCenter's TLS certificate did not verify against the configured CA."""


class VCenterNotFound(VCenterError):
    """A datacenter, DVS, cluster or port group that was named does not exist."""


class VCenterTaskFailed(VCenterError):
    """A vCenter task ended in error."""


class PortGroupNotOwned(VCenterError):
    """A port group with the wanted name exists but was not made by this project."""


class PortGroupNameTaken(VCenterError):
    """vCenter refused the name (DuplicateName) but this DVS has no such port group:
    the name is used elsewhere in the datacenter (another DVS, a standard network)."""


class PortGroupInUse(VCenterError):
    """A port group is still used by VMs, so it is kept for now."""

    permanent = False

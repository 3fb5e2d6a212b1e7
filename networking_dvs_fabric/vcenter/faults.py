"""vCenter faults to the project's errors: every fault gets a kind and a message.

pyVmomi raises vCenter's faults as exceptions (``vmodl.MethodFault`` and its
subclasses, ``vim.fault.*``), from a call or as a task's error.
``VCenterSession`` hands each one to :func:`to_error`, which returns the
project's error (``errors.py``) with the fault in ``fault`` and a message that
names the call (and so the object), the fault's type, vCenter's text and the
fault's own fields - for ``NoPermission`` the privilege and the object it was
missing on.

Which faults are temporary (:data:`TEMPORARY`) is a short list matched with
``isinstance``, so subclasses follow their parent (``InvalidPowerState`` is an
``InvalidState``); everything else is permanent - the rule and why are in
``errors.py``.  The table for operators is in README "Errors".
"""
from __future__ import annotations

import logging
from typing import Any

from pyVmomi import VmomiSupport, vim, vmodl

from networking_dvs_fabric.vcenter import errors

LOG = logging.getLogger(__name__)

# Retrying later may get past these: the object is busy or changed under us, or a
# host / vCenter itself did not manage this time.
TEMPORARY: tuple[type, ...] = (
    vim.fault.ConcurrentAccess,        # another client changed the object meanwhile
    vim.fault.TaskInProgress,          # the object is busy with another task
    vim.fault.ResourceInUse,           # still in use (a VM on the port group)
    vim.fault.Timedout,                # vCenter gave up waiting on something
    vim.fault.InvalidState,            # not in this state (InvalidPowerState, ...)
    vim.fault.DvsOperationBulkFault,   # the change failed on some ESXi hosts
    vmodl.fault.HostCommunication,     # an ESXi host did not answer (HostNotConnected...)
    vmodl.fault.SystemError,           # vCenter's own internal error
    vmodl.fault.RequestCanceled,       # the call or task was cancelled
)

# Permanent whatever the rule for unknown faults: listed so that the table says so.
PERMANENT: tuple[type, ...] = (
    vim.fault.NoPermission,            # a privilege missing (NotAuthenticated: re-login)
    vmodl.fault.SecurityError,
    vmodl.fault.InvalidArgument,
    vmodl.fault.InvalidRequest,
    vim.fault.InvalidName,
    vmodl.fault.NotSupported,
    vmodl.fault.NotImplemented,
    vim.fault.DuplicateName,           # create: a concurrent creator is adopted first
    vim.fault.AlreadyExists,
    vim.fault.InvalidPrivilege,
    vmodl.fault.NotEnoughLicenses,
    vim.fault.DvsNotAuthorized,
)

_BASE_FIELDS = {"msg", "faultCause", "faultMessage", "dynamicType", "dynamicProperty"}


def is_temporary(fault: BaseException) -> bool:
    """The kind of ``fault``: True for temporary, False for permanent (the default)."""
    return isinstance(fault, TEMPORARY)


def fault_name(fault: BaseException) -> str:
    """vCenter's name of the fault's type, e.g. ``vim.fault.NoPermission``."""
    return type(fault).__name__


def to_error(fault: BaseException, what: str, task: bool = False) -> errors.VCenterError:
    """The project's error for a vCenter ``fault`` met while doing ``what``.

    ``task``: the fault is the error of a task that ``what`` started.  The caller
    raises the result ``from fault``.  The message leads with the fault's type (a
    journal listing shows the first 100 characters), e.g. ``vim.fault.NoPermission
    in delete port group 'x' from DVS DVS0: Permission to perform this operation
    was denied. (object=vim.Folder:group-n7, privilegeId=DVPortgroup.Delete);
    permanent, not retried``.
    """
    name, detail = fault_name(fault), describe(fault, with_name=False)
    text = f"{name} in {'the task of ' if task else ''}{what}" + (f": {detail}" if detail else "")
    error: errors.VCenterError
    if isinstance(fault, vmodl.fault.ManagedObjectNotFound):
        error = errors.VCenterNotFound(
            f"{what}: object {_value(fault.obj)} no longer exists "
            f"({fault_name(fault)})")
    elif isinstance(fault, vim.fault.NotAuthenticated):
        # In a call it means a re-login (VCenterSession.invoke); as a task's error or
        # right after a new login it is the session that vCenter does not accept.
        error = errors.VCenterAuthError(text)
    elif isinstance(fault, vim.fault.InvalidLogin):
        error = errors.VCenterAuthError(text)
    elif is_temporary(fault):
        error = errors.VCenterTemporaryFault(f"{text}; temporary, retried later")
    else:
        error = errors.VCenterPermanentFault(f"{text}; permanent, not retried")
    error.fault = fault
    return error


def describe(fault: BaseException, with_name: bool = True) -> str:
    """``type: vCenter's text (field=value, ...)`` for a pyVmomi fault, one line
    (``with_name=False``: without the type)."""
    try:
        detail = _describe(fault)
    except Exception:  # noqa: BLE001 - the error must be raised whatever the fault holds
        LOG.debug("cannot describe vCenter fault %s", fault_name(fault), exc_info=True)
        detail = str(getattr(fault, "msg", None) or "")
    if not with_name:
        return detail
    return f"{fault_name(fault)}: {detail}" if detail else fault_name(fault)


def _describe(fault: BaseException) -> str:
    parts = []
    text = _text(fault)
    if text:
        parts.append(text)
    fields = _fields(fault)
    if fields:
        parts.append(f" ({fields})" if parts else f"({fields})")
    cause = getattr(fault, "faultCause", None)
    if isinstance(cause, BaseException):
        parts.append(f"; caused by {fault_name(cause)}")
        cause_text = _text(cause)
        if cause_text:
            parts.append(f": {cause_text}")
    return "".join(parts)


def _text(fault: BaseException) -> str:
    """vCenter's own words: ``msg`` (the SOAP faultstring), else the localized messages."""
    msg = getattr(fault, "msg", None)
    if msg:
        return str(msg).strip()
    messages = []
    for message in getattr(fault, "faultMessage", None) or []:
        words = getattr(message, "message", None) or getattr(message, "key", None)
        if words:
            messages.append(str(words).strip())
    return "; ".join(messages)


def _fields(fault: BaseException) -> str:
    """The fault's own fields that are set (privilegeId, object, name, ...)."""
    out = []
    for prop in _properties(fault):
        if prop.name in _BASE_FIELDS:
            continue
        value = getattr(fault, prop.name, None)
        if _empty(value):
            continue
        out.append(f"{prop.name}={_value(value)}")
    return ", ".join(out)


def _properties(obj: Any) -> list[Any]:
    """A pyVmomi data object's properties, its parents' included."""
    get = getattr(type(obj), "_GetPropertyList", None)
    return list(get()) if get is not None else []


def _empty(value: Any) -> bool:
    # Not ``value == []``: pyVmomi's managed objects compare only with their own kind.
    return value is None or (isinstance(value, (str, list, tuple)) and not value)


def _value(value: Any, depth: int = 0) -> str:
    """A field's value, short: managed objects as ``type:moid``, data objects inline."""
    if isinstance(value, VmomiSupport.ManagedObject):
        return f"{type(value).__name__}:{value._moId}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item, depth + 1) for item in value) + "]"
    if isinstance(value, VmomiSupport.DataObject) and depth < 3:
        inner = []
        for prop in _properties(value):
            if prop.name in _BASE_FIELDS:
                continue
            item = getattr(value, prop.name, None)
            if not _empty(item):
                inner.append(f"{prop.name}={_value(item, depth + 1)}")
        return "{" + ", ".join(inner) + "}"
    if isinstance(value, type):
        return getattr(value, "_wsdlName", value.__name__)
    return str(value)

"""Unit-test set-up shared by tests/unit: the test-only mechanism drivers on sys.path,
and a runtime of its own for every test.

``tests/fixtures`` holds ``dvsf_test_drivers.py`` and its
``dvsf_test_drivers-0.1.dist-info`` (the ``neutron.ml2.mechanism_drivers``
entry point).  Having the directory on sys.path is all importlib.metadata and
stevedore need: nothing is installed.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))


@pytest.fixture(autouse=True)
def _own_runtime() -> Iterator[None]:
    """Each test builds its drivers' runtime afresh (``runtime.for_process`` keeps one
    per process, as Neutron's processes need): nothing a test's vCenter backend read
    or started carries over to the next test."""
    from networking_dvs_fabric import runtime
    runtime.forget()
    yield
    runtime.forget()

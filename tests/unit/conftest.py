"""Unit-test set-up shared by tests/unit: the test-only mechanism drivers on sys.path.

``tests/fixtures`` holds ``dvsf_test_drivers.py`` and its
``dvsf_test_drivers-0.1.dist-info`` (the ``neutron.ml2.mechanism_drivers``
entry point).  Having the directory on sys.path is all importlib.metadata and
stevedore need: nothing is installed.
"""
from __future__ import annotations

import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

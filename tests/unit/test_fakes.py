"""The fakes reach every seam: no module keeps the real settings, store or provider once they are in place."""

import sys

from app import runtime
from tests.unit.fakes import REAL_VAST

REAL = {"settings": runtime.settings, "store": runtime.store, "vast": REAL_VAST}


def test_no_module_of_the_service_still_reads_the_real_runtime(env):
    missed = sorted(f"{name}.{attr}" for name, module in list(sys.modules.items())
                    if name.split(".")[0] in ("app", "tasks") for attr, real in REAL.items()
                    if getattr(module, attr, None) is real)
    assert missed == [], "add these modules to tests/unit/fakes.SEAMS"

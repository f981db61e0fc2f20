"""``from tl_lvlm import head_attribution`` runs the driver whatever was imported before.

Importing a module of the ``tl_lvlm.head_attribution`` package rebinds
``tl_lvlm.head_attribution`` from the exported function to the package; the package is
callable as the driver, so both orders work.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

ORDERS = {
    "function": "from tl_lvlm import head_attribution",
    "_CallablePackage": "import tl_lvlm.head_attribution.labels\n"
    "from tl_lvlm import answer_token_id, head_attribution",
}

CHECK = """
import tl_lvlm.head_attribution as package
from tl_lvlm.head_attribution.run import head_attribution as driver
if head_attribution is not driver:
    package.head_attribution = lambda *a, **k: ("driver", a, k)
    assert head_attribution(1, n_masks=7) == ("driver", (1,), {"n_masks": 7})
print(type(head_attribution).__name__)
"""


@pytest.mark.parametrize(("kind", "imports"), ORDERS.items(), ids=ORDERS.keys())
def test_exported_head_attribution_runs_the_driver(kind, imports):
    proc = subprocess.run(
        [sys.executable, "-c", imports + CHECK], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == kind

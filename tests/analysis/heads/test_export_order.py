"""``from tl_lvlm import head_attribution`` is the driver function whatever was imported before.

The package holding it is ``tl_lvlm.analysis.heads``, so no import can rebind the name.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

ORDERS = {
    "first": "from tl_lvlm import head_attribution",
    "after a submodule": "import tl_lvlm.analysis.heads.labels\n"
    "from tl_lvlm import answer_token_id, head_attribution",
    "after the package": "import tl_lvlm.analysis.heads\nimport tl_lvlm\n"
    "head_attribution = tl_lvlm.head_attribution",
}

CHECK = """
import types
from tl_lvlm.analysis.heads.run import head_attribution as driver
assert head_attribution is driver, type(head_attribution)
assert isinstance(head_attribution, types.FunctionType)
print("ok")
"""


@pytest.mark.parametrize("imports", ORDERS.values(), ids=ORDERS.keys())
def test_exported_head_attribution_is_the_driver(imports):
    proc = subprocess.run(
        [sys.executable, "-c", imports + CHECK], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"

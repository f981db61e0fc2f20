"""The suite checks annotations at run time, jaxtyping shapes included: ``tests/conftest.py``
installs jaxtyping's import hook (with beartype) before anything imports our packages.

These tests fail if the hook is not active, or if a module was imported before it.
"""

from __future__ import annotations

import sys

import jaxtyping
import numpy as np
import pytest
import torch
from jaxtyping._import_hook import _JaxtypingLoader

from attribution.overlap import _members
from tl_lvlm.inputs import left_padding

pytestmark = pytest.mark.skipif(
    jaxtyping.config.jaxtyping_disable, reason="JAXTYPING_DISABLE=1 turns the checks off"
)


def test_every_module_of_ours_was_loaded_through_the_hook():
    ours = {
        name: module
        for name, module in sys.modules.items()
        if name.split(".")[0] in ("tl_lvlm", "attribution") and getattr(module, "__file__", None)
    }
    assert {"tl_lvlm", "tl_lvlm.model.hooked_lvlm", "attribution"} <= set(ours)
    assert [n for n, m in ours.items() if not isinstance(m.__spec__.loader, _JaxtypingLoader)] == []


def test_a_wrongly_shaped_or_typed_tensor_is_refused():
    mask = torch.ones(2, 5, dtype=torch.long)
    assert left_padding(mask).tolist() == [0, 0]
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'attention_mask'"):
        left_padding(mask[0])  # Int[Tensor, "batch pos"] given one dimension
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'attention_mask'"):
        left_padding(mask.float())  # Int given floats


def test_attribution_is_checked_too():
    with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'x'"):
        _members(np.zeros(4), 2)  # Float[np.ndarray, "m n_components"] given one dimension

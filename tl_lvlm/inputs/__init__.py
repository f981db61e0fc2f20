"""Inputs, the bottom layer: prepared batches with token groups, image conversion, templates.

- :class:`LVLMInputs` (``lvlm_inputs``): a prepared batch and its token groups.
- ``images``: what ``prepare`` accepts as images, converted to RGB PIL images.
- ``templates``: prompt templates with one ``<image>`` and one ``{question}``.

Imports nothing else of tl-lvlm (families and the model build on it).
"""

from tl_lvlm.inputs.lvlm_inputs import GROUPS, LVLMInputs, left_padding, padding_position_ids

__all__ = ["GROUPS", "LVLMInputs", "left_padding", "padding_position_ids"]

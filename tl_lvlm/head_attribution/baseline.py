"""One policy for the ablation baseline: head attribution, image attribution, the flow CLI.

:func:`resolve_baseline` turns what a user passes (``"mean"``, ``"zero"`` or a prebuilt
:class:`~tl_lvlm.ablation.ImageKVBaseline`, and optional reference images) into the
baseline every ablation of a run uses:

- a prebuilt baseline is used as given;
- ``"zero"``: zeros, shaped for the inputs' prompt layout;
- ``"mean"``: the mean image K/V over ``reference`` (images, prepared with the inputs'
  template and first question, or an :class:`~tl_lvlm.LVLMInputs` batch), by default over
  the inputs' own images. A mean over one image is that image itself, so ablating would
  change nothing: refused. A mean over fewer than :data:`MIN_MEAN_IMAGES` images warns,
  since it is close to each of them and shrinks every clean - all-ablated gap.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

from tl_lvlm.ablation import BASELINE_KINDS, ImageKVBaseline, image_kv_baseline
from tl_lvlm.fingerprint import tensor_sha256
from tl_lvlm.inputs import LVLMInputs

#: Fewer reference images than this for a mean baseline gives a UserWarning.
MIN_MEAN_IMAGES = 16

REFERENCE_HINT = (
    "pass reference images (reference=[...] or model.prepare(images, question) in the API, "
    "--reference-images DIR|builtin on the command line)"
)


def resolve_baseline(
    model,
    baseline: Literal["mean", "zero"] | ImageKVBaseline,
    reference: Sequence | LVLMInputs | None,
    inputs: LVLMInputs,
) -> ImageKVBaseline:
    """The image-K/V baseline for ablating ``inputs`` (policy in the module doc).

    Args:
        model: the :class:`~tl_lvlm.HookedLVLM`.
        baseline: ``"mean"``, ``"zero"`` or a prebuilt baseline.
        reference: images (or a prepared batch) whose mean image K/V is the ``"mean"``
            baseline; None = the images of ``inputs``.
        inputs: the prompts that will be ablated (their template, image span and, without
            ``reference``, their images).

    Raises:
        ValueError: an unknown baseline; ``reference`` together with a prebuilt baseline;
            an empty reference; a mean over a single image.
    """
    return resolve_baseline_with_id(model, baseline, reference, inputs)[0]


def resolve_baseline_with_id(
    model,
    baseline: Literal["mean", "zero"] | ImageKVBaseline,
    reference: Sequence | LVLMInputs | None,
    inputs: LVLMInputs,
) -> tuple[ImageKVBaseline, str]:
    """:func:`resolve_baseline` and a string identifying it in configs and stores.

    The id hashes the reference *inputs*, not the resulting K/V, so that it does not
    depend on float details of the forward passes (thread counts, kernels).
    """
    if isinstance(baseline, ImageKVBaseline):
        if reference is not None:
            raise ValueError(
                "reference images make a 'mean' baseline, but a prebuilt ImageKVBaseline was "
                "passed too: pass one of them"
            )
        return baseline, f"custom:{tensor_sha256(baseline.k, baseline.v)[:16]}"
    if isinstance(baseline, str) and baseline == "zero":
        return image_kv_baseline(model, inputs[:1], kind="zero"), "zero"
    if not isinstance(baseline, str) or baseline not in BASELINE_KINDS:
        raise ValueError(
            f"baseline must be one of {BASELINE_KINDS} or an ImageKVBaseline, got {baseline!r}"
        )
    ref = _reference_inputs(model, reference, inputs)
    n = ref.batch_size
    if n < 2:
        raise ValueError(
            "the 'mean' baseline needs reference images: a mean over 1 image is that image "
            f"itself, so ablating would change nothing; {REFERENCE_HINT}, or use "
            "baseline='zero'"
        )
    if n < MIN_MEAN_IMAGES:
        warnings.warn(
            f"the mean baseline is computed over only {n} images (fewer than "
            f"{MIN_MEAN_IMAGES}): it is close to each of them, which shrinks the clean - "
            f"all-ablated gaps; {REFERENCE_HINT}",
            UserWarning,
            stacklevel=3,
        )
    kv = image_kv_baseline(model, ref, kind="mean")
    return kv, f"mean:{tensor_sha256(ref.input_ids, ref.pixel_values)[:16]}"


def _reference_inputs(model, reference, inputs: LVLMInputs) -> LVLMInputs:
    if reference is None:
        return inputs
    if isinstance(reference, LVLMInputs):
        return reference
    images = list(reference)
    if not images:
        raise ValueError(
            "reference is empty: pass at least two images for the mean baseline, or "
            "reference=None to average over the samples' own images"
        )
    question = inputs.questions[0] if inputs.questions else ""
    # Image K/V only depend on the text before the image, so one question serves all.
    return model.prepare(images, question, template=inputs.template)

"""Image-K/V baselines and the one policy for choosing one.

:class:`ImageKVBaseline` holds the keys and values an ablated head sees at the image
positions instead of the clean ones; :func:`image_kv_baseline` builds the mean or zero
baseline from reference inputs.

:func:`resolve_baseline` is the policy head attribution, image-token attribution and the
flow CLI share. It turns what a user passes (``"mean"``, ``"zero"`` or a prebuilt
:class:`ImageKVBaseline`, and optional reference images) into the baseline every
ablation of a run uses:

- a prebuilt baseline is used as given;
- ``"zero"``: zeros; they fit any image geometry (:meth:`ImageKVBaseline.for_inputs`
  shapes them for each sample's image span), so a folder of mixed sizes just works;
- ``"mean"``: the mean image K/V over ``reference`` (images, prepared with the inputs'
  template and first question, or an :class:`~tl_lvlm.LVLMInputs` batch), by default over
  the inputs' own images. A mean over one image is that image itself, so ablating would
  change nothing: refused. A mean over fewer than :data:`MIN_MEAN_IMAGES` images warns,
  since it is close to each of them and shrinks every clean - all-ablated gap.

Mixed image sizes. On a fixed-resolution family (LLaVA-1.5, Gemma 3) the processor maps
every image to one token grid, so one mean fits every sample. On a dynamic-resolution family
(:attr:`~tl_lvlm.families.LVLMFamily.fixed_resolution` False: LLaVA-NeXT, OneVision,
Qwen2.5-VL) the number and layout of image tokens follow the image size, and a mean per
image position only means something among images of one geometry. The mean is therefore
computed per geometry (:class:`GeometryMeanBaseline`): for a sample of size ``W x H`` the
reference images are resized to ``W x H`` and processed as that sample was. The means of
the last :attr:`GeometryMeanBaseline.max_cached` sizes are kept (each is as large as the
model's image K/V, about 1 GB for a 7B LLaVA-NeXT in bf16); a sample of another size
rebuilds its mean, a few reference forward passes against the thousands of masked ones its
attribution runs. Chosen over resizing every image to one geometry because it keeps each sample as
the researcher gave it (its aspect ratio, its number of image tokens, the tiling the model
was trained with), while each head is still ablated towards "an average image" as the
paper does; resizing would attribute a different input than the one the model answers in
the wild. Rows of different geometries cannot share one batch of the hook reference: run
them one row at a time (the engine and the analyses run one sample at a time anyway).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

from attribution.own_checks import checks_own_arguments
from tl_lvlm._utils.fingerprint import tensor_sha256
from tl_lvlm._utils.hooks import HookList
from tl_lvlm._utils.tensors import gather_positions
from tl_lvlm.inputs import LVLMInputs
from tl_lvlm.inputs.images import to_rgb_images

if TYPE_CHECKING:
    from tl_lvlm.model import HookedLVLM

BASELINE_KINDS = ("mean", "zero")


@dataclass(frozen=True)
class ImageKVBaseline:
    """Baseline keys and values at the image positions, per layer and KV head.

    ``k`` is what RoPE rotates (the family's key hook, :func:`key_hook`: ``hook_k``,
    or ``hook_k_normed`` on models with q/k norms): it is rotated with the
    positions of the run it is used in. A baseline only fits inputs with the same ``template`` and
    the same (unpadded) ``image_span``; :meth:`check` enforces it.

    Attributes:
        k: ``[n_layers, n_kv_heads, n_image, d_head]`` pre-rotary keys.
        v: ``[n_layers, n_kv_heads, n_image, d_head]`` values.
        kind: ``"mean"`` or ``"zero"``.
        template: prompt template of the inputs it was built from.
        image_span: ``(start, end)`` of the image tokens in an unpadded prompt.
        n_samples: number of inputs averaged (0 for ``"zero"``).
    """

    k: Float[Tensor, "n_layers n_kv_heads n_image d_head"]
    v: Float[Tensor, "n_layers n_kv_heads n_image d_head"]
    kind: str
    template: str
    image_span: tuple[int, int]
    n_samples: int

    @property
    def n_image(self) -> int:
        return int(self.k.shape[2])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ImageKVBaseline:
        return replace(self, k=self.k.to(device, dtype), v=self.v.to(device, dtype))

    def for_inputs(self, model: HookedLVLM, inputs: LVLMInputs) -> ImageKVBaseline:
        """This baseline for ``inputs``: a zero baseline at their image span, else ``self``.

        Raises:
            ValueError: a mean baseline that does not fit (see :meth:`check`); zeros for
                rows of different image spans.
        """
        if self.kind == "zero":
            spans = {unpadded_image_span(inputs, r) for r in range(inputs.batch_size)}
            if spans != {self.image_span} and len(spans) == 1:
                return image_kv_baseline(model, inputs[:1], kind="zero")
        self.check(model, inputs)
        return self

    def check(self, model: HookedLVLM, inputs: LVLMInputs) -> None:
        """Raise ``ValueError`` unless this baseline fits ``model`` and every row of ``inputs``."""
        want = (model.n_layers, model.n_kv_heads, self.n_image, model.d_head)
        if tuple(self.k.shape) != want or tuple(self.v.shape) != want:
            raise ValueError(
                f"baseline k/v have shape {tuple(self.k.shape)} but this model needs "
                f"[n_layers, n_kv_heads, n_image, d_head] = {want}; build the baseline with "
                "image_kv_baseline(model, ...) on the same model"
            )
        if inputs.template != self.template:
            raise ValueError(
                f"baseline was built for template {self.template!r} but the inputs use "
                f"{inputs.template!r}; build a baseline with image_kv_baseline(model, inputs) "
                "on inputs prepared with the same template"
            )
        for row in range(inputs.batch_size):
            span = unpadded_image_span(inputs, row)
            n_image = inputs.positions("image", row).numel()
            if span != self.image_span or n_image != self.n_image:
                raise ValueError(
                    f"baseline was built for image span {self.image_span} ({self.n_image} image "
                    f"tokens) but row {row} of the inputs has its image at {span} ({n_image} "
                    "image tokens); pass baseline='mean' or 'zero' (fitted to each image size by "
                    "resolve_baseline), or build this baseline on inputs with the same template "
                    "and image size"
                )


def unpadded_image_span(inputs: LVLMInputs, row: int = 0) -> tuple[int, int]:
    """``(start, end)`` of the image tokens of ``row`` counted without its left padding."""
    if not bool((inputs.image[row] >= 0).any()):
        raise ValueError(
            f"row {row} of the inputs has no image tokens; image-K/V ablation needs a prompt "
            "with an <image> placeholder (prepare it with model.prepare(image, question))"
        )
    start, end = inputs.image_span(row)
    pad = inputs.padding(row)
    return start - pad, end - pad


@dataclass(frozen=True)
class GeometryMeanBaseline:
    """The mean baseline of a dynamic-resolution family, one mean per image geometry.

    :meth:`for_inputs` resizes the reference images to the size of the inputs' image,
    prepares them as the inputs were (template, first question) and averages their image
    K/V (:func:`image_kv_baseline`); the means of the last ``max_cached`` sizes are kept.

    Attributes:
        reference: the reference images (RGB PIL).
        question: the question they are prepared with (image K/V do not depend on it).
        template: the inputs' template.
        max_cached: how many sizes' means are kept (least recently used dropped first).
    """

    reference: tuple
    question: str
    template: str
    kind: str = "mean"
    max_cached: int = 2
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_samples(self) -> int:
        return len(self.reference)

    def for_inputs(self, model: HookedLVLM, inputs: LVLMInputs) -> ImageKVBaseline:
        """The mean at the image geometry of ``inputs``' rows (built on first use).

        Raises:
            ValueError: rows of different image sizes (split the batch), or inputs
                prepared from a ``pixel_values`` tensor, whose image size is unknown.
        """
        if not inputs.images:
            raise ValueError(
                "a per-geometry mean baseline needs to know the inputs' image sizes, but they "
                "were prepared from a pixel_values tensor; prepare them from images"
            )
        sizes = {image.size for image in inputs.images}
        if len(sizes) != 1:
            raise ValueError(
                f"the rows of these inputs have images of sizes {sorted(sizes)}, and each "
                "image geometry has its own mean baseline: run them one row at a time "
                "(inputs[i])"
            )
        (size,) = sizes
        baseline = self._cache.pop(size, None)  # re-inserted last: the most recently used
        if baseline is None:
            resized = [image.resize(size, Image.BICUBIC) for image in self.reference]
            ref = model.prepare(resized, self.question, template=self.template)
            baseline = image_kv_baseline(model, ref, kind="mean")
        self._cache[size] = baseline
        while len(self._cache) > self.max_cached:
            del self._cache[next(iter(self._cache))]
        baseline.check(model, inputs)
        return baseline


@torch.no_grad()
def image_kv_baseline(
    model: HookedLVLM, inputs: LVLMInputs, kind: str = "mean", *, batch_size: int = 16
) -> ImageKVBaseline:
    """Build a baseline for image-K/V ablation from reference inputs.

    Args:
        model: the model whose keys and values are averaged.
        inputs: reference images with one template (questions may differ: the keys
            and values at image positions only depend on the text before them).
        kind: ``"mean"``: mean pre-rotary K (after the q/k norm, if any) and V per
            (layer, KV head, image position) over the rows of ``inputs``; ``"zero"``: zeros.
        batch_size: rows per forward pass when averaging.

    Returns:
        :class:`ImageKVBaseline` with ``k``, ``v`` ``[n_layers, n_kv_heads, n_image, d_head]``
        in the model's dtype and device.

    Raises:
        NotImplementedError: the model refuses image-K/V ablation (its reason named).
    """
    if kind not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline kind {kind!r}; expected one of {BASELINE_KINDS}")
    model.family.require("ablation")  # a baseline is for image-K/V ablation only
    spans = {unpadded_image_span(inputs, r) for r in range(inputs.batch_size)}
    if len(spans) != 1:
        raise ValueError(
            f"the reference inputs put the image at different spans {sorted(spans)}; a baseline "
            "needs one prompt layout (same template and image size): pass the reference as a "
            "list of images to resolve_baseline (or --reference-images DIR), which averages "
            "them per image size, or baseline='zero' (--baseline zero)"
        )
    (span,) = spans
    # The image tokens, not the span: where a family interleaves them with markers
    # (LVLMFamily.interleaved_image) the span holds those too.
    n_image = inputs.positions("image", 0).numel()
    shape = (model.n_layers, model.n_kv_heads, n_image, model.d_head)
    dtype = model.hf_model.dtype
    if kind == "zero":
        k = v = torch.zeros(shape, dtype=dtype, device=model.device)
    else:
        # Accumulate in fp32 so that a bf16 model's mean is not rounded per batch.
        sums = {name: torch.zeros(shape, device=model.device) for name in ("k", "v")}
        for start in range(0, inputs.batch_size, batch_size):
            rows = inputs[start : start + batch_size]
            model.run_with_hooks(rows, fwd_hooks=_sum_hooks(model, rows.image, sums))
        k, v = ((sums[n] / inputs.batch_size).to(dtype) for n in ("k", "v"))
    n_samples = 0 if kind == "zero" else inputs.batch_size
    return ImageKVBaseline(k, v, kind, inputs.template, span, n_samples)


def key_hook(model: HookedLVLM, layer: int) -> tuple[str, int]:
    """The hook holding ``layer``'s keys as RoPE receives them, and its position axis
    (:meth:`~tl_lvlm.families.LVLMFamily.key_hook` of the model's family)."""
    return model.family.key_hook(layer)


def _sum_hooks(
    model: HookedLVLM, image: Int[Tensor, "batch n_image"], sums: dict[str, Tensor]
) -> HookList:
    """Hooks adding each row's keys (:func:`key_hook`) and values at its image positions into
    ``sums``."""

    def add(name: str, layer: int, pos_dim: int):
        def hook(t: Tensor, hook) -> None:
            at_image = gather_positions(t, image, dim=pos_dim).sum(0)
            if pos_dim == 1:  # [n_image, n_kv_heads, d_head]
                at_image = at_image.transpose(0, 1)
            sums[name][layer] += at_image.float()

        return hook

    hooks = []
    for layer in range(model.n_layers):
        k_name, k_pos = key_hook(model, layer)
        v_name, v_pos = model.family.value_hook(layer)
        hooks += [(k_name, add("k", layer, k_pos)), (v_name, add("v", layer, v_pos))]
    return hooks


#: Fewer reference images than this for a mean baseline gives a UserWarning.
MIN_MEAN_IMAGES = 16

REFERENCE_HINT = (
    "pass reference images (reference=[...] or model.prepare(images, question) in the API, "
    "--reference-images DIR|builtin on the command line)"
)


@checks_own_arguments
def resolve_baseline(
    model,
    baseline: Literal["mean", "zero"] | ImageKVBaseline | GeometryMeanBaseline,
    reference: Sequence | LVLMInputs | None,
    inputs: LVLMInputs,
) -> ImageKVBaseline | GeometryMeanBaseline:
    """The image-K/V baseline for ablating ``inputs`` (policy in the module doc).

    Its ``for_inputs(model, sample)`` gives the :class:`ImageKVBaseline` of one sample's
    image geometry (the engine and the hook reference call it).

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


@checks_own_arguments
def resolve_baseline_with_id(
    model,
    baseline: Literal["mean", "zero"] | ImageKVBaseline | GeometryMeanBaseline,
    reference: Sequence | LVLMInputs | None,
    inputs: LVLMInputs,
) -> tuple[ImageKVBaseline | GeometryMeanBaseline, str]:
    """:func:`resolve_baseline` and a string identifying it in configs and stores.

    The id hashes the reference *inputs*, not the resulting K/V, so that it does not
    depend on float details of the forward passes (thread counts, kernels).
    """
    if isinstance(baseline, (ImageKVBaseline, GeometryMeanBaseline)):
        if reference is not None:
            raise ValueError(
                "reference images make a 'mean' baseline, but a prebuilt baseline was "
                "passed too: pass one of them"
            )
        if isinstance(baseline, GeometryMeanBaseline):
            return baseline, f"mean-per-geometry:{_images_sha256(baseline.reference)[:16]}"
        return baseline, f"custom:{tensor_sha256(baseline.k, baseline.v)[:16]}"
    if isinstance(baseline, str) and baseline == "zero":
        return image_kv_baseline(model, inputs[:1], kind="zero"), "zero"
    if not isinstance(baseline, str) or baseline not in BASELINE_KINDS:
        raise ValueError(
            f"baseline must be one of {BASELINE_KINDS} or an ImageKVBaseline, got {baseline!r}"
        )
    per_geometry = not model.family.fixed_resolution and not isinstance(reference, LVLMInputs)
    if per_geometry:
        images = _reference_images(reference, inputs)
        n = len(images)
    else:
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
    if per_geometry:
        question = inputs.questions[0] if inputs.questions else ""
        means = GeometryMeanBaseline(tuple(images), question, inputs.template)
        return means, f"mean-per-geometry:{_images_sha256(images)[:16]}"
    kv = image_kv_baseline(model, ref, kind="mean")
    return kv, f"mean:{tensor_sha256(ref.input_ids, ref.pixel_values)[:16]}"


def _reference_images(reference, inputs: LVLMInputs) -> list[Image.Image]:
    """The reference images of a per-geometry mean: ``reference``, else the inputs' own."""
    if reference is None:
        if not inputs.images:
            raise ValueError(
                "the inputs were prepared from a pixel_values tensor, so their images cannot be "
                f"resized to each image geometry for the mean baseline; {REFERENCE_HINT}"
            )
        return list(inputs.images)
    images = list(reference)
    if not images:
        raise ValueError(
            "reference is empty: pass at least two images for the mean baseline, or "
            "reference=None to average over the samples' own images"
        )
    return to_rgb_images(images)


def _images_sha256(images: Sequence[Image.Image]) -> str:
    """sha256 over the images' sizes and RGB bytes (what the per-geometry means depend on)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(repr(image.size).encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


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

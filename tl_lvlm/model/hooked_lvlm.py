"""``HookedLVLM``: a LLaVA-style model on TransformerLens 4's ``TransformerBridge``.

The bridge does the wrapping (hook points with TransformerLens names on every
block, ``run_with_cache``, ``run_with_hooks``); this class adds what an LVLM
needs on top: the processor, prompt templates, token groups, and images carried
through every call.

Through this class's calls, ``hook_embed`` fires on the merged text and image
embeddings that enter the residual stream (:mod:`tl_lvlm.model.embed_hook`); through
``model.bridge`` or ``model.hf_model`` directly it fires on the token embedding,
where image positions hold the ``<image>`` token's embedding.

Traps of the bridge worth knowing (they are not bugs of this package):

- On LLaVA, ``vision_encoder.hook_out`` fires on the CLIP tower's output, but
  ``LlavaModel`` reads the *hidden states* of ``vision_feature_layer`` from the
  tower, not that output: edits there have no effect. Edit image features at
  ``vision_projector.hook_out`` (``[batch, n_image, d_model]``) instead.
- ``blocks.{l}.attn.hook_k`` / ``hook_v`` are **pre-rotary** and have one head
  per *KV* head (``[batch, pos, n_kv_heads, d_head]``): with grouped-query
  attention, editing one KV head changes every query head of its group.
  ``hook_rot_k`` is post-rotary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from attribution.own_checks import checks_own_arguments
from tl_lvlm.families import FAMILIES, LVLMFamily, family_of
from tl_lvlm.inputs import GROUPS, LVLMInputs, left_padding
from tl_lvlm.inputs.images import check_questions, to_rgb_images
from tl_lvlm.inputs.templates import IMAGE_PLACEHOLDER, QUESTION_PLACEHOLDER, split_template
from tl_lvlm.model.cache import lvlm_cache
from tl_lvlm.model.embed_hook import hook_embed_at_residual_input
from tl_lvlm.model.unembed import folded_residual_directions

__all__ = ["FAMILIES", "BoundLVLM", "HookedLVLM", "family_of"]


#: Accepted ``dtype`` strings of :meth:`HookedLVLM.from_pretrained`.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@checks_own_arguments
def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """``"auto"`` (bf16 on CUDA, fp32 elsewhere), a name from :data:`DTYPES`, or a torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(
        f"unsupported dtype {dtype!r}; expected 'auto', one of {tuple(DTYPES)}, or the "
        "matching torch dtype (torch.float32, torch.bfloat16, torch.float16)"
    )


class HookedLVLM:
    """A LLaVA-style vision-language model with TransformerLens hooks.

    Wraps a ``TransformerBridge`` (``self.bridge``) around a Hugging Face model
    (``self.hf_model``) of a registered family (``self.family``, an
    :class:`~tl_lvlm.families.LVLMFamily`: LLaVA-1.5, LLaVA-NeXT, Gemma 3, ...), with
    its processor.
    Attributes the class does not define are looked up on the bridge, so
    ``model.cfg``, ``model.blocks``, ``model.hook_dict``, ``model.hooks(...)``
    and other TransformerLens tooling work as on a bridge.

    Every call takes :class:`~tl_lvlm.inputs.LVLMInputs` from :meth:`prepare`,
    so the images, attention mask and padding-aware positions travel together.
    """

    def __init__(self, bridge, processor, *, template: str | None = None):
        self.hf_model = bridge.original_model
        #: The model's :class:`~tl_lvlm.families.LVLMFamily`, bound to ``hf_model``.
        self.family: LVLMFamily = family_of(self.hf_model.config)(self.hf_model)
        template = template or self.family.default_template(processor)
        if template is None:
            raise ValueError(
                f"the {self.family.name} processor has no chat template to derive a prompt "
                "template from; pass template=..., e.g. with <image> and {question}"
            )
        split_template(template)
        self.bridge = bridge
        self.processor = processor
        self.tokenizer = processor.tokenizer
        # Left padding puts every row's final token at position -1.
        self.tokenizer.padding_side = "left"
        self.template = template
        self.image_token_id = self.family.image_token_id

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        template: str | None = None,
    ) -> HookedLVLM:
        """Load an LVLM checkpoint (hub name, local directory, or a bundled zoo name).

        Families: see :data:`~tl_lvlm.families.FAMILIES` (LLaVA-1.5, LLaVA-NeXT, Gemma 3,
        ...; add one with :func:`~tl_lvlm.families.register_family`).

        Args:
            name_or_path: e.g. ``"llava-hf/llava-1.5-7b-hf"``, a directory written by
                ``save_pretrained``, or ``"tl-lvlm/tiny-digits"``.
            dtype: ``"auto"`` (bfloat16 on CUDA, float32 on CPU), ``"float32"``,
                ``"bfloat16"``, ``"float16"`` or the torch dtype. Final-position logits
                are computed in float32 whatever the dtype.
            device: defaults to CUDA when available, else CPU.
            template: prompt template with ``<image>`` and ``{question}``; None = the
                family's (LLaVA-1.5's conversation format, else the processor's chat
                template for one user turn, see ``LVLMFamily.template_from_chat``).

        Raises:
            ValueError: an architecture HookedLVLM does not know; a bad ``dtype``.
            NotImplementedError: a known family that cannot be supported, with the reason.
        """
        from transformers import AutoConfig

        from tl_lvlm import zoo

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = resolve_dtype(dtype, device)
        path = zoo.resolve(str(name_or_path))
        family = family_of(AutoConfig.from_pretrained(path))
        processor = family.load_processor(path)
        hf_model = family.load_model(path, dtype)
        return cls.from_hf(hf_model.to(device).eval(), processor, template=template)

    @classmethod
    def from_hf(cls, hf_model, processor, *, template: str | None = None) -> HookedLVLM:
        """Wrap a Hugging Face model already in memory, with its processor.

        The bridge swaps the model's attention modules for hooked ones in place.
        """
        family = family_of(hf_model.config)
        name = str(getattr(hf_model.config, "_name_or_path", "") or "local-llava")
        tokenizer = processor.tokenizer
        # TransformerLens reads name_or_path from init_kwargs, which a tokenizer
        # built in memory lacks; with add_bos_token set it does not re-load it.
        tokenizer.init_kwargs.setdefault("name_or_path", tokenizer.name_or_path)
        bridge = family.boot_bridge(name, hf_model, tokenizer)
        bridge.processor = processor
        return cls(bridge, processor, template=template)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not found normally: delegate to the bridge.
        if name == "bridge":
            raise AttributeError(name)
        return getattr(self.bridge, name)

    # ------------------------------------------------ PyTorch habits, kept
    # nn.Module's methods return the module they were called on; called through the
    # delegation above they would return the bare bridge, and a user holding that would
    # lose prepare and run image-blind. Each runs on the bridge and returns this model.
    def to(self, *args, **kwargs) -> HookedLVLM:
        """Move and/or cast the model as ``nn.Module.to`` does; returns this model."""
        self.bridge.to(*args, **kwargs)
        return self

    def cpu(self) -> HookedLVLM:
        return self.to("cpu")

    def cuda(self, device: int | str | torch.device | None = None) -> HookedLVLM:
        if device is None or isinstance(device, int):
            device = torch.device("cuda", device)
        return self.to(device)

    def eval(self) -> HookedLVLM:
        self.bridge.eval()
        return self

    def train(self, mode: bool = True) -> HookedLVLM:
        self.bridge.train(mode)
        return self

    def half(self) -> HookedLVLM:
        return self.to(torch.float16)

    def float(self) -> HookedLVLM:
        return self.to(torch.float32)

    def bfloat16(self) -> HookedLVLM:
        return self.to(torch.bfloat16)

    def requires_grad_(self, requires_grad: bool = True) -> HookedLVLM:
        self.bridge.requires_grad_(requires_grad)
        return self

    # ------------------------------------------- TransformerLens habits, kept
    @property
    def blocks(self) -> _Blocks:
        """The bridge's blocks, where ``blocks[l].attn.OV`` / ``.QK`` are layer ``l``'s
        circuits (``[n_heads, d_model, d_model]`` FactoredMatrix), as in TransformerLens;
        everything else is the bridge's own component."""
        return _Blocks(self.bridge.blocks)

    def get_token_position(
        self,
        single_token: str | int,
        input: LVLMInputs | str | Tensor,
        mode: str = "first",
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        *,
        row: int = 0,
    ) -> int:
        """Position of ``single_token`` in ``input``, as TransformerLens's
        ``get_token_position``; with :class:`LVLMInputs`, in row ``row``'s padded
        ``input_ids`` (image tokens included), so the position indexes its activations."""
        if isinstance(input, LVLMInputs):
            input = input.input_ids[row]
        return self.bridge.get_token_position(single_token, input, mode, prepend_bos, padding_side)

    def _check_inputs(self, inputs: Any, call: str) -> None:
        """Refuse anything but :class:`LVLMInputs`: token ids alone would run image-blind."""
        if isinstance(inputs, LVLMInputs):
            return
        what = type(inputs).__name__
        raise TypeError(
            f"{call} takes LVLMInputs from model.prepare(image, question), got {what}: a "
            "string, image, array or token ids alone would run without the image (its "
            "<image> tokens embedded as text). Call model.prepare(image, question) first, or "
            "model.bind(inputs) for TransformerLens tooling that passes tokens"
        )

    # ------------------------------------------------------------ model facts
    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.bridge.cfg.n_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(self.bridge.cfg.n_key_value_heads or self.bridge.cfg.n_heads)

    @property
    def d_head(self) -> int:
        return int(self.bridge.cfg.d_head)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.family.image_size

    @property
    def n_ctx(self) -> int:
        return self.family.n_ctx

    # ------------------------------------------------------------------ inputs
    @checks_own_arguments
    def prepare(
        self,
        images,
        questions: str | Sequence[str],
        *,
        template: str | None = None,
        image_size: int | tuple[int, int] | None = None,
    ) -> LVLMInputs:
        """Process images and questions into :class:`LVLMInputs` with token groups.

        Args:
            images: one image or a list: PIL images, uint8 arrays ``HxWx3`` or ``HxW``
                (grayscale), float arrays in ``[0, 1]`` (``HxWx3`` or ``HxW``), or paths
                to image files (see :mod:`tl_lvlm.inputs.images`); or a
                ``[batch, 3, H, W]`` tensor of already-processed ``pixel_values``.
            questions: one question or a list, without an image placeholder (the
                template places the image). A single image or question is broadcast
                against a list of the other.
            template: overrides the model's template for this call.
            image_size: resize every image to ``W x H`` first (an int: a square; a
                ``(width, height)`` pair), so that images of mixed sizes share one image
                geometry (one token count and layout on dynamic-resolution families);
                None = keep each image's size.

        Rows are left-padded; every row's final token is at position ``-1``.

        Raises:
            TypeError: an image of another type or array dtype (the message names
                the accepted forms).
            ValueError: an array of another shape, a float array outside ``[0, 1]``,
                a path that is not an image file, a question containing the image
                placeholder, or an ``image_size`` below 1 or with a ``pixel_values`` tensor.
        """
        template = template or self.template
        before, between, after = split_template(template)
        pixel_values = None
        given_pixels = isinstance(images, Tensor)
        if given_pixels:
            if image_size is not None:
                raise ValueError(
                    "image_size resizes images before the processor, but pixel_values were "
                    "passed (processed already); pass the images, or image_size=None"
                )
            pixel_values = self._check_pixel_values(images)
            images = [self._blank_image()] * pixel_values.shape[0]
        else:
            images = to_rgb_images(images, image_size)
        questions = [questions] if isinstance(questions, str) else list(questions)
        if not questions:
            raise ValueError("prepare needs at least one question")
        check_questions(questions, (IMAGE_PLACEHOLDER, getattr(self.processor, "image_token", "")))
        images, questions = self._broadcast(list(images), questions)

        texts = [
            template.replace(QUESTION_PLACEHOLDER, q).replace(
                IMAGE_PLACEHOLDER, self.family.image_prompt
            )
            for q in questions
        ]
        enc = self.family.process(self.processor, images, texts)
        input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
        if input_ids.shape[1] > self.n_ctx:
            raise ValueError(
                f"prompt is {input_ids.shape[1]} tokens but the model's context is "
                f"{self.n_ctx}; shorten the question (longest: {max(map(len, questions))} chars)"
            )
        if pixel_values is None:
            pixel_values = enc["pixel_values"]
        pixel_values = pixel_values.to(self.device, self.hf_model.dtype)
        groups = [
            self._row_groups(
                input_ids[r], attention_mask[r], (before, between, questions[r], after)
            )
            for r in range(len(texts))
        ]
        padded = {name: _pad_rows([g[name] for g in groups]) for name in GROUPS}
        extra = {
            k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "pixel_values")
        }
        return LVLMInputs(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            template=template,
            questions=questions,
            extra=extra,
            family=self.family,
            images=[] if given_pixels else list(images),
            **padded,
        ).to(self.device)

    def _broadcast(self, images: list, questions: list[str]) -> tuple[list, list[str]]:
        if len(images) == len(questions):
            return images, questions
        if len(questions) == 1:
            return images, questions * len(images)
        if len(images) == 1:
            return images * len(questions), questions
        raise ValueError(
            f"got {len(images)} images for {len(questions)} prompts, each with one "
            f"{IMAGE_PLACEHOLDER} placeholder; pass one image per question (or a single "
            "image or question to broadcast)"
        )

    def _check_pixel_values(self, pixel_values: Tensor) -> Tensor:
        if not self.family.fixed_resolution:
            raise ValueError(
                f"{self.family.name} tiles each image by its size, and the processor's other "
                "outputs (image sizes, token counts) go with its pixel_values; pass PIL images "
                "or arrays, not a pixel_values tensor"
            )
        s = self.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"pixel_values must be [batch, 3, {s}, {s}] for this model's vision tower, got "
                f"{tuple(pixel_values.shape)}; pass PIL images to let the processor resize them"
            )
        return pixel_values

    def _blank_image(self):
        from PIL import Image

        return Image.fromarray(np.zeros((self.image_size, self.image_size, 3), np.uint8))

    def _row_groups(
        self, ids: Tensor, mask: Tensor, parts: tuple[str, str, str, str]
    ) -> dict[str, Tensor]:
        """Token groups of one (left-padded) row, from the tokenizer's offsets."""
        before, between, question, after = parts
        start = int(left_padding(mask[None])[0])
        real = ids[start:]
        img = (real == self.image_token_id).nonzero().flatten()
        if img.numel() == 0:
            raise ValueError("the processed prompt has no image tokens; check the template")
        n_img = img.numel()
        image_text = self.family.image_text(self.processor, real, img)
        expanded = before + image_text + between + question + after
        enc = self.tokenizer(expanded, return_offsets_mapping=True)
        if enc["input_ids"] != real.tolist():
            raise ValueError(
                "re-tokenizing the prompt did not reproduce the processor's tokens; the "
                "tokenizer may not give character offsets for this template"
            )
        question_end = len(expanded) - len(after)
        img_start, img_end = int(img[0]), int(img[-1]) + 1
        pos = torch.arange(len(real))
        starts = torch.tensor([s for s, _ in enc["offset_mapping"]])
        last = len(real) - 1
        after_img = pos >= img_end
        groups = {
            "prefix": pos[:img_start],
            "image": img,
            "question": pos[after_img & (starts < question_end) & (pos < last)],
            "role": pos[after_img & (starts >= question_end) & (pos < last)],
            "final": pos[last:],
        }
        if img_end - img_start != n_img and not self.family.interleaved_image:
            raise ValueError("image tokens are not contiguous in the processed prompt")
        return {k: v + start for k, v in groups.items()}

    # --------------------------------------------------------------- running
    @checks_own_arguments
    def forward(self, inputs: LVLMInputs, **kwargs) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits for every position (kwargs go to the bridge's forward)."""
        self._check_inputs(inputs, "model(...)")
        with hook_embed_at_residual_input(self):
            return self.bridge(inputs.input_ids, **inputs.model_kwargs(), **kwargs)

    __call__ = forward

    @checks_own_arguments
    def run_with_cache(self, inputs: LVLMInputs, **kwargs):
        """``(logits, ActivationCache)``; kwargs as for the bridge (``names_filter``, ...).

        ``hook_embed`` holds what enters the residual stream, the projected image
        features at image positions (see :mod:`tl_lvlm.model.embed_hook`),
        ``cache.logit_attrs`` uses :meth:`tokens_to_residual_directions`, and
        ``cache.decompose_resid`` lists the family's extra residual inputs
        (:mod:`tl_lvlm.model.cache`).
        """
        self._check_inputs(inputs, "run_with_cache")
        with hook_embed_at_residual_input(self):
            logits, cache = self.bridge.run_with_cache(
                inputs.input_ids, **inputs.model_kwargs(), **kwargs
            )
        return logits, lvlm_cache(cache, self)

    @checks_own_arguments
    def run_with_hooks(self, inputs: LVLMInputs, fwd_hooks=(), bwd_hooks=(), **kwargs):
        """Logits of a run with ``fwd_hooks`` ``[(hook_name or filter, fn), ...]`` attached.

        An edit of ``hook_embed`` at image positions edits the image features the
        language model reads (see :mod:`tl_lvlm.model.embed_hook`).
        """
        self._check_inputs(inputs, "run_with_hooks")
        with hook_embed_at_residual_input(self):
            return self.bridge.run_with_hooks(
                inputs.input_ids,
                fwd_hooks=list(fwd_hooks),
                bwd_hooks=list(bwd_hooks),
                **inputs.model_kwargs(),
                **kwargs,
            )

    def final_logits(
        self,
        inputs: LVLMInputs,
        fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
        vocab: Int[Tensor, " n_vocab"] | None = None,
    ) -> Float[Tensor, "batch n_vocab"]:
        """Final-position logits in fp32 of a run with ``fwd_hooks``.

        Computed from the final hidden state (the unembedding's input) by the family's
        :meth:`~tl_lvlm.families.LVLMFamily.final_logits`, so a bf16 model's logits
        are not rounded to bf16. ``vocab``: only these token ids' logits (None = all).
        """
        final: list[Tensor] = []

        def keep_final(hidden: Float[Tensor, "batch pos d_model"], hook) -> None:
            final.append(hidden[:, -1])

        self.run_with_hooks(inputs, fwd_hooks=[*fwd_hooks, ("unembed.hook_in", keep_final)])
        return self.family.final_logits(final[-1], vocab)

    @torch.no_grad()
    def answer(self, inputs: LVLMInputs) -> tuple[Int[Tensor, " batch"], list[str]]:
        """Greedy first answer token per row and its decoded string."""
        logits = self.final_logits(inputs)
        ids = logits.argmax(-1)
        return ids, [self.tokenizer.decode([int(i)]) for i in ids]

    def to_str_tokens(
        self,
        input: LVLMInputs | str | list | Tensor | np.ndarray,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        *,
        row: int = 0,
    ) -> list[str] | list[list[str]]:
        """Decoded string of every token, as TransformerLens's ``to_str_tokens``.

        Takes what the bridge's ``to_str_tokens`` takes (a string or list of strings,
        tokenized with ``prepend_bos`` / ``padding_side``; a 1-D token tensor or array,
        or a 2-D one with one row) and also :class:`LVLMInputs` (row ``row``, padding
        and image tokens included) and a 2-D token tensor of several rows (one list
        per row).
        """
        if isinstance(input, LVLMInputs):
            input = input.input_ids[row]
        if isinstance(input, Tensor) and input.ndim == 2 and input.shape[0] > 1:
            return [self.bridge.to_str_tokens(r) for r in input]
        return self.bridge.to_str_tokens(input, prepend_bos, padding_side)

    def tokens_to_residual_directions(self, tokens) -> Float[Tensor, "... d_model"]:
        """Unembedding directions with the final norm's weight folded in.

        As ``HookedTransformer`` with ``fold_ln=True``: dotted with a stack from
        ``cache.apply_ln_to_stack``, they give its contribution to the logit, so
        ``cache.logit_attrs`` adds up (see :mod:`tl_lvlm.model.unembed`).
        """
        return folded_residual_directions(self, tokens)

    @torch.no_grad()
    @checks_own_arguments
    def generate(
        self,
        inputs: LVLMInputs,
        max_new_tokens: int = 16,
        *,
        return_type: str = "str",
        do_sample: bool = False,
        verbose: bool = False,
        **kwargs,
    ) -> list[str] | Int[Tensor, "batch new"]:
        """Continue every row of ``inputs``, with its image, through the bridge.

        Hooks attached to the model fire at every step (``hook_embed`` as in
        :meth:`run_with_hooks`). Greedy by default, unlike TransformerLens's
        ``generate``, which samples: the tokens are those of the Hugging Face
        model's own ``generate(..., do_sample=False)``.

        Args:
            inputs: from :meth:`prepare`; token ids alone are refused, since they
                would run without the image.
            max_new_tokens: at most this many tokens per row; a row stops at the
                end-of-sequence token (``stop_at_eos=False`` to go on).
            return_type: ``"str"``, the decoded continuation of each row (special
                tokens dropped), or ``"tokens"``, the new token ids.
            do_sample, verbose, kwargs: for ``TransformerBridge.generate``
                (``temperature``, ``top_k``, ``top_p``, ``stop_at_eos``,
                ``eos_token_id``, ...; ``use_past_kv_cache=False`` is refused).

        Returns:
            ``list[str]`` with one continuation per row, or ``[batch, n_new]`` token ids
            (after a row has stopped, its remaining places hold the end-of-sequence id).
        """
        self._check_inputs(inputs, "generate")
        if return_type not in ("str", "tokens"):
            raise ValueError(f"return_type must be 'str' or 'tokens', got {return_type!r}")
        if not kwargs.get("use_past_kv_cache", True):
            # The bridge hands the images to the first step only; without the KV cache each
            # later step re-runs the whole prompt, its image tokens embedded as text.
            raise ValueError(
                "generate needs use_past_kv_cache=True (the default): without the KV cache "
                "the steps after the first would run the prompt without its image"
            )
        carried = sorted(kwargs.keys() & _CARRIED_BY_INPUTS)
        if carried:
            raise TypeError(
                f"generate got {', '.join(carried)}: the images, attention mask and "
                "positions come with inputs, and the output is the continuation only; "
                "for the prompt's cache use run_with_cache(inputs)"
            )
        if not kwargs.get("use_past_kv_cache", True):
            raise ValueError(
                "generate needs use_past_kv_cache=True: the bridge's loop passes the images "
                "only to the first step, so without the cache every later step would re-run "
                "the prompt with its image tokens embedded as text"
            )
        # The family's forward arguments (its repacking of pixel_values included) go to the
        # first step; the position ids of the later steps continue the prompt's.
        model_kwargs = inputs.model_kwargs()
        positions = model_kwargs.pop("position_ids")
        with hook_embed_at_residual_input(self), _decode_step_positions(self.hf_model, positions):
            out = self.bridge.generate(
                inputs.input_ids,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                verbose=verbose,
                return_type="tokens",
                **model_kwargs,
                **kwargs,
            )
        new = out[:, inputs.seq_len :]
        if return_type == "tokens":
            return new
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def bind(self, inputs: LVLMInputs) -> BoundLVLM:
        """A view of the model that runs token-only calls with ``inputs``' images.

        TransformerLens utilities call ``model.run_with_hooks(tokens, ...)`` and
        ``model(tokens)`` with tokens alone; the bound view adds the images,
        attention mask and positions of ``inputs``.
        """
        return BoundLVLM(self, inputs)


class BoundLVLM:
    """A :class:`HookedLVLM` whose token-only calls carry one batch's images.

    Calls that take ``tokens`` run only the bound ``input_ids``; everything else is
    the model's (``bound.to_str_tokens``, ``bound.cfg``, ...).
    """

    def __init__(self, model: HookedLVLM, inputs: LVLMInputs):
        self.model = model
        self.inputs = inputs

    def _kwargs(self, tokens: Tensor) -> dict[str, Tensor]:
        if not isinstance(tokens, Tensor) or not torch.equal(
            tokens.to(self.inputs.input_ids.device), self.inputs.input_ids
        ):
            raise ValueError(
                "a bound HookedLVLM only runs the input_ids it was bound to; "
                "bind the model to the inputs you want to run (model.bind(inputs))"
            )
        return self.inputs.model_kwargs()

    def forward(self, tokens: Tensor, **kwargs):
        kwargs = {**self._kwargs(tokens), **kwargs}
        with hook_embed_at_residual_input(self.model):
            return self.model.bridge(tokens, **kwargs)

    __call__ = forward

    def run_with_hooks(self, tokens: Tensor, *args, **kwargs):
        kwargs = {**self._kwargs(tokens), **kwargs}
        with hook_embed_at_residual_input(self.model):
            return self.model.bridge.run_with_hooks(tokens, *args, **kwargs)

    def run_with_cache(self, tokens: Tensor, *args, **kwargs):
        kwargs = {**self._kwargs(tokens), **kwargs}
        with hook_embed_at_residual_input(self.model):
            logits, cache = self.model.bridge.run_with_cache(tokens, *args, **kwargs)
        return logits, lvlm_cache(cache, self.model)

    def generate(self, tokens: Tensor | None = None, max_new_tokens: int = 16, **kwargs):
        """:meth:`HookedLVLM.generate` on the bound inputs (``tokens``: their input_ids)."""
        if tokens is not None:
            self._kwargs(tokens)
        return self.model.generate(self.inputs, max_new_tokens, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("model", "inputs"):
            raise AttributeError(name)
        return getattr(self.model, name)


#: ``TransformerBridge.generate`` arguments that :meth:`HookedLVLM.generate` sets itself.
_CARRIED_BY_INPUTS = frozenset(
    {"input", "pixel_values", "attention_mask", "position_ids", "return_cache", "output_logits"}
)


class _Blocks(Sequence):
    """``model.blocks``: the bridge's blocks, each seen through :class:`_BlockView`."""

    def __init__(self, blocks: torch.nn.ModuleList):
        self._blocks = blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [_BlockView(b) for b in self._blocks[index]]
        return _BlockView(self._blocks[index])

    def __getattr__(self, name: str) -> Any:
        if name == "_blocks":
            raise AttributeError(name)
        return getattr(self._blocks, name)


class _Delegate:
    """A view of a bridge component: its own attributes first, then the component's."""

    def __init__(self, component: torch.nn.Module):
        object.__setattr__(self, "_component", component)

    def __getattr__(self, name: str) -> Any:
        if name == "_component":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._component, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._component, name, value)

    def __call__(self, *args, **kwargs):
        return self._component(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self._component)


class _BlockView(_Delegate):
    @property
    def attn(self) -> _AttentionView:
        return _AttentionView(self._component.attn)


class _AttentionView(_Delegate):
    """A layer's attention with TransformerLens's per-layer circuits."""

    def _per_query_head(self, w: Float[Tensor, "n_kv_heads ..."]) -> Float[Tensor, "n_heads ..."]:
        # Grouped-query attention: each KV head serves n_heads / n_kv_heads query heads.
        return w.repeat_interleave(self.W_Q.shape[0] // w.shape[0], dim=0)

    @property
    def OV(self):
        """``[n_heads, d_model, d_model]`` FactoredMatrix ``W_V @ W_O`` per query head."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self._per_query_head(self.W_V), self.W_O)

    @property
    def QK(self):
        """``[n_heads, d_model, d_model]`` FactoredMatrix ``W_Q @ W_K^T`` per query head."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_Q, self._per_query_head(self.W_K).transpose(-2, -1))


@contextlib.contextmanager
def _decode_step_positions(
    hf_model: torch.nn.Module, prompt: Int[Tensor, "... batch pos"]
) -> Iterator[None]:
    """Position ids for the decoding steps of the bridge's generate loop, until the block ends.

    A step with ``n_new`` tokens after ``n_cached`` cached ones gets the prompt's last
    position (``prompt[..., -1:]``, the family's ids: ``[batch, 1]``, or ``[3, batch, 1]``
    for M-RoPE) plus its offset from the prompt's end: every generated token is text, one
    position after the one before. The loop derives positions from the growing mask only
    for models that take 2-D positions; a model that owns its position derivation (M-RoPE)
    gets none, and Hugging Face's fallback reads the whole mask as the new tokens'
    positions. The prompt step keeps the model's own positions (and sets M-RoPE deltas).
    """
    n_prompt, last = prompt.shape[-1], prompt[..., -1:]

    def continue_positions(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        n_cached = 0 if cache is None else cache.get_seq_length()
        if n_cached == 0:
            return None
        n_new = kwargs["attention_mask"].shape[-1] - n_cached
        offset = n_cached - n_prompt + 1
        kwargs["position_ids"] = last + torch.arange(offset, offset + n_new, device=last.device)
        return args, kwargs

    handle = hf_model.register_forward_pre_hook(continue_positions, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _pad_rows(rows: list[Tensor]) -> Int[Tensor, "batch n"]:
    """Stack 1-D index tensors into ``[batch, n_max]``, padding with -1."""
    n = max(r.numel() for r in rows)
    out = torch.full((len(rows), n), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out

"""Processors that transformers builds only with torchvision, built without it: Qwen2-VL's,
Qwen2.5-VL's, Qwen3-VL's, LLaVA-OneVision's, Gemma 4's and SmolVLM's without a video
processor, and Pixtral's (Mistral 3).

In transformers 5, ``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor``, ``Qwen3VLProcessor`` (also
Qwen3-VL-MoE's) and ``LlavaOnevisionProcessor`` take a video processor, and
``ProcessorMixin.__init__`` checks
every sub-processor's class against its modality's base class
(``check_argument_for_proper_class``). The video base class ``VideoProcessorMixin`` is only
a placeholder without torchvision, so the check itself fails, before any video is seen.
Images never need it: the image processors have PIL backends (``Qwen2VLImageProcessorPil``,
also Qwen2.5-VL's and Qwen3-VL's; ``LlavaOnevisionImageProcessorPil``) and the
models' forward passes need no torchvision.

The classes here are those processors minus the video processor. ``ProcessorMixin``
takes its sub-processors from the names in ``__init__``'s signature
(``get_attributes``) and binds the positional ones to those names, so a subclass whose
signature has no ``video_processor`` holds, checks, loads and saves only the image
processor and the tokenizer; the ``None`` the parent's ``__init__`` passes on for the
video processor is bound to nothing. Everything else (``__call__``, the image-token
expansion, the chat template) is the parent's code. They save as the parent class, so
a checkpoint written here loads with ``AutoProcessor`` where torchvision is installed.

``SmolVLMProcessor`` also refuses to start without ``num2words``, which only its video
prompts use (to spell out frame counts); the image-only class starts without it and, having
no video processor, never builds a video prompt.

``PixtralProcessor`` needs no video processor, but its module imports one helper,
``get_resize_output_image_size``, from the torchvision image processor's module, so without
torchvision the class cannot even be imported (``transformers.PixtralProcessor`` is then a
placeholder that raises). :func:`pixtral_processor_class` imports the real class with that
module name resolved, for the import only, to the PIL image processor's module, which
defines the same function (same code, same results); the processor's own code is unchanged.

Classes are created on first use, so importing tl_lvlm imports no processor code.

Each ``__init__`` here is ``no_type_check``: ``ProcessorMixin.from_args_and_dict`` reads the
arguments a processor takes from ``cls.__init__.__code__``, which the wrapper of a runtime type
checker (the test suite's jaxtyping import hook) would hide.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import no_type_check


def torchvision_available() -> bool:
    """Whether torchvision can be imported (then the standard processors are used)."""
    return importlib.util.find_spec("torchvision") is not None


def num2words_available() -> bool:
    """Whether num2words can be imported (``SmolVLMProcessor`` needs it, for video prompts)."""
    return importlib.util.find_spec("num2words") is not None


class _SavedAsStandard:
    """Mixin: save as the standard processor, so that ``AutoProcessor`` loads the files.

    ``processor_config.json`` names the standard class, and the image processor's
    settings are also written to the legacy ``preprocessor_config.json``, as the public
    checkpoints ship them: ``AutoVideoProcessor`` builds the video processor from that
    file where torchvision is installed.
    """

    standard_class: str

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["processor_class"] = self.standard_class
        return out

    def save_pretrained(self, save_directory, **kwargs):
        saved = super().save_pretrained(save_directory, **kwargs)
        self.image_processor.save_pretrained(save_directory)
        return saved


def _qwen_images_only(parent: type) -> type:
    """``parent`` (a Qwen-VL processor: image processor, tokenizer, video processor, chat
    template) without its video processor; saved as ``parent``."""

    class QwenImagesOnlyProcessor(_SavedAsStandard, parent):
        standard_class = parent.__name__

        @no_type_check
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    # Not "<parent minus Processor>ImageProcessor": that is HF's image-processor class name.
    QwenImagesOnlyProcessor.__name__ = QwenImagesOnlyProcessor.__qualname__ = (
        f"{parent.__name__}ImagesOnly"
    )
    QwenImagesOnlyProcessor.__doc__ = (
        f"``{parent.__name__}`` for images only (no video processor, no torchvision)."
    )
    return QwenImagesOnlyProcessor


@functools.cache
def qwen2_5_vl_processor_class() -> type:
    """``Qwen2_5_VLProcessor`` without a video processor."""
    from transformers import Qwen2_5_VLProcessor

    return _qwen_images_only(Qwen2_5_VLProcessor)


@functools.cache
def qwen2_vl_processor_class() -> type:
    """``Qwen2VLProcessor`` without a video processor."""
    from transformers import Qwen2VLProcessor

    return _qwen_images_only(Qwen2VLProcessor)


@functools.cache
def qwen3_vl_processor_class() -> type:
    """``Qwen3VLProcessor`` (Qwen3-VL's and Qwen3.5's) without a video processor."""
    from transformers import Qwen3VLProcessor

    return _qwen_images_only(Qwen3VLProcessor)


@functools.cache
def llava_onevision_processor_class() -> type:
    """``LlavaOnevisionProcessor`` without a video processor."""
    from transformers import LlavaOnevisionProcessor

    class LlavaOnevisionImageProcessor(_SavedAsStandard, LlavaOnevisionProcessor):
        """``LlavaOnevisionProcessor`` for images only (no video processor, no torchvision)."""

        standard_class = LlavaOnevisionProcessor.__name__

        # The parent's parameters minus video_processor: from_pretrained passes a
        # processor_config.json entry only when __init__ names it.
        @no_type_check
        def __init__(
            self,
            image_processor=None,
            tokenizer=None,
            num_image_tokens=None,
            vision_feature_select_strategy=None,
            chat_template=None,
            image_token="<image>",
            video_token="<video>",
            vision_aspect_ratio="anyres_max_9",
        ):
            super().__init__(
                image_processor,
                tokenizer,
                None,
                num_image_tokens=num_image_tokens,
                vision_feature_select_strategy=vision_feature_select_strategy,
                chat_template=chat_template,
                image_token=image_token,
                video_token=video_token,
                vision_aspect_ratio=vision_aspect_ratio,
            )

    return LlavaOnevisionImageProcessor


@functools.cache
def gemma4_processor_class() -> type:
    """``Gemma4Processor`` without a video processor or an audio feature extractor."""
    from transformers import Gemma4Processor, ProcessorMixin

    class _WithoutAbsent(ProcessorMixin):
        # Gemma4Processor hands its sub-processors to ProcessorMixin by keyword, which
        # refuses names outside the signature; the absent ones (None) are left out here,
        # between the two in the method resolution order.
        @no_type_check
        def __init__(self, *args, **kwargs):
            attributes = self.get_attributes()
            kwargs = {k: v for k, v in kwargs.items() if k in attributes or v is not None}
            super().__init__(*args, **kwargs)

    class Gemma4ImageProcessor(_SavedAsStandard, Gemma4Processor, _WithoutAbsent):
        """``Gemma4Processor`` for images only (no video processor, no torchvision, no audio
        feature extractor)."""

        standard_class = Gemma4Processor.__name__

        @no_type_check
        def __init__(
            self,
            image_processor=None,
            tokenizer=None,
            chat_template=None,
            image_seq_length=280,
            audio_seq_length=750,
            audio_ms_per_token=40,
        ):
            super().__init__(
                None,
                image_processor,
                tokenizer,
                None,
                chat_template=chat_template,
                image_seq_length=image_seq_length,
                audio_seq_length=audio_seq_length,
                audio_ms_per_token=audio_ms_per_token,
            )

    return Gemma4ImageProcessor


def _no_video_num2words(number: int) -> str:
    raise NotImplementedError(
        "tl-lvlm's image-only SmolVLM processor builds no video prompts (install torchvision "
        "and num2words for the standard SmolVLMProcessor)"
    )


@functools.cache
def smolvlm_processor_class() -> type:
    """``SmolVLMProcessor`` without a video processor, and without ``num2words``."""
    from transformers import SmolVLMProcessor
    from transformers.processing_utils import ProcessorMixin

    module = sys.modules[SmolVLMProcessor.__module__]

    class SmolVLMImageProcessor(_SavedAsStandard, SmolVLMProcessor):
        """``SmolVLMProcessor`` for images only (no video processor, no torchvision)."""

        standard_class = SmolVLMProcessor.__name__

        @no_type_check
        def __init__(
            self, image_processor=None, tokenizer=None, image_seq_len=169, chat_template=None
        ):
            # The parent's __init__ checks that num2words is importable; only its video
            # prompts call it, and this class has no video processor to make one.
            found = module.num2words
            module.num2words = found or _no_video_num2words
            try:
                super().__init__(
                    image_processor,
                    tokenizer,
                    None,
                    image_seq_len=image_seq_len,
                    chat_template=chat_template,
                )
            finally:
                module.num2words = found

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            # The parent's override only adds video sampling defaults, read from the video
            # processor.
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    return SmolVLMImageProcessor


@functools.cache
def pixtral_processor_class() -> type:
    """The real ``PixtralProcessor``, imported without torchvision where it is missing."""
    if torchvision_available():
        from transformers.models.pixtral.processing_pixtral import PixtralProcessor

        return PixtralProcessor
    torchvision_module = "transformers.models.pixtral.image_processing_pixtral"
    # The PIL module's get_resize_output_image_size is the same function; the alias lives
    # only while processing_pixtral is imported, so nothing else sees it.
    sys.modules[torchvision_module] = importlib.import_module(
        "transformers.models.pixtral.image_processing_pil_pixtral"
    )
    try:
        module = importlib.import_module("transformers.models.pixtral.processing_pixtral")
    finally:
        del sys.modules[torchvision_module]
    return module.PixtralProcessor


def qwen2_5_vl_processor(image_processor, tokenizer, chat_template: str | None = None):
    """A ``Qwen2_5_VLProcessor`` of ``image_processor`` and ``tokenizer``, no video processor."""
    return qwen2_5_vl_processor_class()(image_processor, tokenizer, chat_template=chat_template)


def qwen2_vl_processor(image_processor, tokenizer, chat_template: str | None = None):
    """A ``Qwen2VLProcessor`` of ``image_processor`` and ``tokenizer``, no video processor."""
    return qwen2_vl_processor_class()(image_processor, tokenizer, chat_template=chat_template)


def qwen3_vl_processor(image_processor, tokenizer, chat_template: str | None = None):
    """A ``Qwen3VLProcessor`` of ``image_processor`` and ``tokenizer``, no video processor."""
    return qwen3_vl_processor_class()(image_processor, tokenizer, chat_template=chat_template)


def llava_onevision_processor(
    image_processor, tokenizer, chat_template: str | None = None, **kwargs
):
    """A ``LlavaOnevisionProcessor`` of ``image_processor`` and ``tokenizer``, no video
    processor; ``kwargs`` as for the processor (``num_image_tokens``, ...)."""
    return llava_onevision_processor_class()(
        image_processor, tokenizer, chat_template=chat_template, **kwargs
    )


def smolvlm_processor(image_processor, tokenizer, chat_template: str | None = None, **kwargs):
    """A ``SmolVLMProcessor`` of ``image_processor`` and ``tokenizer``, no video processor;
    ``kwargs`` as for the processor (``image_seq_len``)."""
    return smolvlm_processor_class()(
        image_processor, tokenizer, chat_template=chat_template, **kwargs
    )


def load_image_processor_only(image_only_class: type, path: str | Path):
    """Load a checkpoint's processor: ``AutoProcessor`` where torchvision is installed, else
    ``image_only_class`` (one of the classes above) from the same files.

    Without torchvision, the image processor is the PIL backend that ``AutoImageProcessor``
    falls back to, the tokenizer, chat template and processor settings come from the
    checkpoint as ``AutoProcessor`` would read them; only the video processor is left out.
    """
    if torchvision_available():
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)
    return image_only_class.from_pretrained(path)

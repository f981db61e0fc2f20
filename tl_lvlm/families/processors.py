"""Qwen2-VL's, Qwen2.5-VL's and LLaVA-OneVision's processors without a video processor
(no torchvision).

In transformers 5, ``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor`` and
``LlavaOnevisionProcessor`` take a video processor, and ``ProcessorMixin.__init__``
checks every sub-processor's class against its modality's base class
(``check_argument_for_proper_class``). The video base class ``VideoProcessorMixin`` is
only a placeholder without torchvision, so the check itself fails, before any video is
seen. Images never need it: the image processors have PIL
backends (``Qwen2VLImageProcessorPil``, ``LlavaOnevisionImageProcessorPil``) and the
models' forward passes need no torchvision.

The classes here are those processors minus the video processor. ``ProcessorMixin``
takes its sub-processors from the names in ``__init__``'s signature
(``get_attributes``) and binds the positional ones to those names, so a subclass whose
signature has no ``video_processor`` holds, checks, loads and saves only the image
processor and the tokenizer; the ``None`` the parent's ``__init__`` passes on for the
video processor is bound to nothing. Everything else (``__call__``, the image-token
expansion, the chat template) is the parent's code. They save as the parent class, so
a checkpoint written here loads with ``AutoProcessor`` where torchvision is installed.

Classes are created on first use, so importing tl_lvlm imports no processor code.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path


def torchvision_available() -> bool:
    """Whether torchvision can be imported (then the standard processors are used)."""
    return importlib.util.find_spec("torchvision") is not None


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

"""The kit for your own tests (as ``torch.testing`` is for PyTorch's): tiny random checkpoints
of every registered family, saved in Hugging Face format, and test images.

- :func:`save_tiny_family` / :data:`BUILDERS`: a tiny ``(hf_model, processor)`` per family
  (``sorted(BUILDERS)``: ``"gemma3"``, ``"gemma4"``, ``"idefics3"``, ``"internvl"``, ``"llava"``,
  ``"llava_next"``, ``"mistral3"``, ``"qwen2_5_vl"``, ``"qwen3_vl"``, ...), written with
  ``save_pretrained`` so ``HookedLVLM.from_pretrained(path)`` loads it as it loads a hub
  checkpoint. Forward passes take milliseconds on a CPU; no torchvision needed.
- :func:`write_digit_coco` / :func:`write_digit_styles` (``coco``): the bundled digits as a
  COCO data set (one main digit per image, distractors, multi-object images, polygon and RLE
  segmentations) and as style folders, for image-source tests.
- :func:`build_tiny_llava` / :func:`save_tiny_llava` (:class:`TinyLlavaConfig`): a tiny
  LLaVA-1.5 of any shape (the zoo's builder).
- :func:`random_images`, :data:`TEST_QUESTIONS`.

Production code never imports this package; tests, benchmarks and examples may.
"""

from tl_lvlm.inputs.templates import LLAVA_15_TEMPLATE
from tl_lvlm.testing._tiny import TinyFamilyConfig, family_tokenizer
from tl_lvlm.testing.builders import BUILDERS, save_tiny_family
from tl_lvlm.testing.coco import write_digit_coco, write_digit_styles
from tl_lvlm.testing.gemma3 import (
    GEMMA3_IMAGE,
    GEMMA3_IMAGE_TOKENS,
    GEMMA3_PATCH,
    build_tiny_gemma3,
)
from tl_lvlm.testing.gemma4 import (
    GEMMA4_PATCH,
    GEMMA4_POOL,
    GEMMA4_SOFT_TOKENS,
    build_tiny_gemma4,
)
from tl_lvlm.testing.idefics3 import (
    IDEFICS3_LONGEST,
    IDEFICS3_PATCH,
    IDEFICS3_SCALE,
    IDEFICS3_TILE,
    build_tiny_idefics3,
)
from tl_lvlm.testing.internvl import (
    INTERNVL_MAX_TILES,
    INTERNVL_PATCH,
    INTERNVL_TILE,
    build_tiny_internvl,
    build_tiny_internvl3_5,
)
from tl_lvlm.testing.llava import build_tiny_llava_15
from tl_lvlm.testing.llava_next import NEXT_PATCH, NEXT_PINPOINTS, NEXT_TILE, build_tiny_llava_next
from tl_lvlm.testing.llava_onevision import (
    OV_PATCH,
    OV_PINPOINTS,
    OV_TILE,
    build_tiny_llava_onevision,
)
from tl_lvlm.testing.mistral3 import (
    MISTRAL3_LONGEST,
    MISTRAL3_MERGE,
    MISTRAL3_PATCH,
    build_tiny_mistral3,
)
from tl_lvlm.testing.qwen2_5_vl import QWEN_MERGE, QWEN_PATCH, build_tiny_qwen2_5_vl
from tl_lvlm.testing.qwen2_vl import build_tiny_qwen2_vl
from tl_lvlm.testing.qwen3_5 import QWEN3_5_LAYER_TYPES, build_tiny_qwen3_5
from tl_lvlm.testing.qwen3_vl import QWEN3_DEEPSTACK, build_tiny_qwen3_vl, build_tiny_qwen3_vl_moe
from tl_lvlm.testing.smolvlm import build_tiny_smolvlm
from tl_lvlm.zoo.questions import DIGIT_WORDS
from tl_lvlm.zoo.tiny_llava import (
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    TinyLlavaConfig,
    build_processor,
    build_tiny_llava,
    build_tokenizer,
    random_images,
    save_atomic,
    save_tiny_llava,
    scale_init,
)

#: Two questions of different lengths, so a batch of them needs padding.
TEST_QUESTIONS = [
    "What is the main object in this image? Answer in a single word.",
    "Which number is written here?",
]

__all__ = [
    "BUILDERS",
    "DIGIT_WORDS",
    "GEMMA3_IMAGE",
    "GEMMA3_IMAGE_TOKENS",
    "GEMMA3_PATCH",
    "GEMMA4_PATCH",
    "GEMMA4_POOL",
    "GEMMA4_SOFT_TOKENS",
    "IDEFICS3_LONGEST",
    "IDEFICS3_PATCH",
    "IDEFICS3_SCALE",
    "IDEFICS3_TILE",
    "IMAGE_TOKEN",
    "INTERNVL_MAX_TILES",
    "INTERNVL_PATCH",
    "INTERNVL_TILE",
    "LLAVA_15_TEMPLATE",
    "MISTRAL3_LONGEST",
    "MISTRAL3_MERGE",
    "MISTRAL3_PATCH",
    "NEXT_PATCH",
    "NEXT_PINPOINTS",
    "NEXT_TILE",
    "OV_PATCH",
    "OV_PINPOINTS",
    "OV_TILE",
    "QWEN3_DEEPSTACK",
    "QWEN_MERGE",
    "QWEN3_5_LAYER_TYPES",
    "QWEN_PATCH",
    "SPECIAL_TOKENS",
    "TEST_QUESTIONS",
    "TinyFamilyConfig",
    "TinyLlavaConfig",
    "build_processor",
    "build_tiny_gemma3",
    "build_tiny_internvl",
    "build_tiny_internvl3_5",
    "build_tiny_gemma4",
    "build_tiny_idefics3",
    "build_tiny_llava_15",
    "build_tiny_llava_next",
    "build_tiny_llava_onevision",
    "build_tiny_mistral3",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen3_vl",
    "build_tiny_qwen3_vl_moe",
    "build_tiny_smolvlm",
    "build_tiny_qwen2_vl",
    "build_tiny_qwen3_5",
    "build_tiny_llava",
    "build_tokenizer",
    "family_tokenizer",
    "random_images",
    "save_atomic",
    "save_tiny_family",
    "save_tiny_llava",
    "write_digit_coco",
    "write_digit_styles",
    "scale_init",
]

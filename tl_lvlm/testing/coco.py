"""The digits as a COCO-format data set and as style folders, for tests of
``--coco-annotations`` and ``--styles`` (:mod:`tl_lvlm.zoo.digits_coco`, which ``tl-lvlm demo``
also runs on)."""

from tl_lvlm.zoo.digits_coco import DigitCoco, write_digit_coco, write_digit_styles

__all__ = ["DigitCoco", "write_digit_coco", "write_digit_styles"]

"""A ``datasets.Dataset`` (image and ClassLabel columns) through ``head_attribution``,
``image_token_attribution`` and ``flow_sweep`` gives exactly what the same images as
``(image, question, label)`` tuples give; ``image_size=`` is resizing the samples and the
reference images first."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image

from tl_lvlm import head_attribution, zoo
from tl_lvlm.analysis.image_tokens import image_token_attribution
from tl_lvlm.flow import PAPER_EDGE_SETS, flow_sweep
from tl_lvlm.zoo.digits import load_digit_images
from tl_lvlm.zoo.questions import DIGIT_WORDS

Q = zoo.DIGITS_QUESTION
FAST = {"n_masks": 120, "evaluate": False, "progress": False, "batch_size": 120}


@pytest.fixture(scope="module")
def digits():
    images, values = load_digit_images(split="test", style="original")
    return images[:2], [int(v) for v in values[:2]], images[10:13]


@pytest.fixture(scope="module")
def digit_dataset(digits) -> datasets.Dataset:
    images, values, _ = digits
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(DIGIT_WORDS))}
    )
    return datasets.Dataset.from_dict({"image": images, "label": values}, features=features)


def test_dataset_is_the_tuples(digits_model, digits, digit_dataset):
    images, values, _ = digits
    tuples = [(im, Q, DIGIT_WORDS[v]) for im, v in zip(images, values, strict=True)]
    got = head_attribution(digits_model, digit_dataset, question=Q, baseline="zero", **FAST)
    want = head_attribution(digits_model, tuples, baseline="zero", **FAST)
    assert got.sample_ids.tolist() == want.sample_ids.tolist() == [0, 1]
    np.testing.assert_array_equal(got.labels, want.labels)
    for a, b in zip(got.fits, want.fits, strict=True):
        np.testing.assert_array_equal(a.coef, b.coef)

    got = image_token_attribution(
        digits_model, digit_dataset.select([0]), question=Q, baseline="zero", n_masks=48,
        progress=False,
    )  # fmt: skip
    want = image_token_attribution(
        digits_model, tuples[:1], baseline="zero", n_masks=48, progress=False
    )
    np.testing.assert_array_equal(got[0].coef, want[0].coef)

    sweep = flow_sweep(digits_model, digit_dataset, PAPER_EDGE_SETS["text_flow"], 12,
                       question=Q, progress=False)  # fmt: skip
    label_ids = [digits_model.tokenizer(f" {DIGIT_WORDS[v]}", add_special_tokens=False)
                 ["input_ids"][0] for v in values]  # fmt: skip
    prepared = flow_sweep(digits_model, digits_model.prepare(images, Q), PAPER_EDGE_SETS[
        "text_flow"], 12, targets=label_ids, progress=False)  # fmt: skip
    assert sweep.targets.tolist() == label_ids and sweep.excluded == prepared.excluded == {}
    for name, knocked in prepared.knocked.items():
        np.testing.assert_array_equal(sweep.knocked[name], knocked)


def test_dataset_needs_a_question_and_one_source_of_labels(digits_model, digit_dataset):
    with pytest.raises(TypeError, match="no question: pass question='...'"):
        head_attribution(digits_model, digit_dataset, **FAST)
    with pytest.raises(ValueError, match="labels given both in the dataset's column 'label' and"):
        flow_sweep(digits_model, digit_dataset, PAPER_EDGE_SETS["text_flow"], question=Q,
                   labels=["one"] * 2)  # fmt: skip
    with pytest.raises(ValueError, match="no column 'digit'; its columns are 'image', 'label'"):
        image_token_attribution(digits_model, digit_dataset, question=Q, label_column="digit")
    with pytest.raises(ValueError, match="image_column= and label_column= choose the columns"):
        head_attribution(digits_model, [(Image.new("RGB", (8, 8)), Q)], label_column=None)


@pytest.mark.filterwarnings("ignore:the mean baseline is computed over only 3 images")
def test_image_size_resizes_samples_and_reference(digits_model, digits):
    images, _, reference = digits
    size = (30, 20)  # wide: the centre crop of the processor then differs from the square's

    def resized(ims):
        return [im.resize(size, Image.BICUBIC) for im in ims]

    def run(samples, ref, **kwargs):
        result = head_attribution(digits_model, [(im, Q) for im in samples], reference=ref,
                                  **FAST, **kwargs)  # fmt: skip
        return np.stack([f.coef for f in result.fits])

    want = run(resized(images[:1]), resized(reference))
    np.testing.assert_array_equal(run(images[:1], reference, image_size=size), want)
    # Not a no-op: the sample alone resized (reference as given) attributes otherwise.
    assert not np.array_equal(run(resized(images[:1]), reference), want)
    with pytest.raises(
        ValueError, match="samples are LVLMInputs .*pass image_size to model.prepare"
    ):
        head_attribution(digits_model, digits_model.prepare(images, Q), image_size=28, **FAST)

"""``BuildOptions``: the options every source shares, validated on construction."""

from __future__ import annotations

import dataclasses

import pytest

from medisee.data.build import Builder, BuildOptions
from medisee.data.splits import DEFAULT_RATIOS


def test_defaults_are_the_old_keyword_defaults():
    options = BuildOptions()
    assert options.seed == 0
    assert options.mask_format == "rle"
    assert options.qa == "template"
    assert tuple(options.ratios) == DEFAULT_RATIOS == (0.8, 0.1, 0.1)
    assert options.overwrite is False
    assert options.allow_unknown_labels is False
    assert options.train_qa_variants == 0


def test_rejects_unknown_qa_mode():
    with pytest.raises(ValueError, match="qa must be one of"):
        BuildOptions(qa="llm")


def test_rejects_negative_train_qa_variants():
    with pytest.raises(ValueError, match="train_qa_variants must be >= 0"):
        BuildOptions(train_qa_variants=-1)


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.8, -0.1, 0.3), (0, 0, 0)])
def test_rejects_bad_ratios(ratios):
    with pytest.raises(ValueError, match="ratios must be"):
        BuildOptions(ratios=ratios)


def test_rejects_unknown_mask_format():
    with pytest.raises(ValueError, match="mask_format must be one of"):
        BuildOptions(mask_format="npy")


def test_ratios_kept_as_given_and_options_frozen():
    options = BuildOptions(ratios=[8, 1, 1])
    assert options.ratios == (8, 1, 1)  # not normalised: the manifest info records them as given
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 1  # type: ignore[misc]


def test_builder_reads_its_options(tmp_path, ontology):
    builder = Builder(tmp_path, ontology=ontology)
    assert (builder.seed, builder.ratios, builder.train_qa_variants) == (0, DEFAULT_RATIOS, 0)
    assert builder.allow_unknown_labels is False
    options = BuildOptions(seed=4, qa="none", train_qa_variants=2, allow_unknown_labels=True)
    builder = Builder(tmp_path / "b", options, ontology=ontology)
    assert builder.seed == 4 and builder.engine is None and builder.allow_unknown_labels
    assert builder.train_qa_variants == 0  # variants need template QA, as before

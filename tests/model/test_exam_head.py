"""The exam head (``medisee.model.exam_head``): pooling, the fit, the kinds an answer
may draw from, and generation constrained to the labels of the image's exam."""

from __future__ import annotations

import pytest
import torch

from medisee.model.answer_constraint import ANSWER_FORMS
from medisee.model.config import ModelConfig
from medisee.model.exam_head import ExamHead, allowed_exams, fit_exam_head, labels_of_exams
from medisee.model.medisee import MediSee, build_model
from medisee.model.presets import tiny
from tests.conftest import TINY_CORPUS


def test_pool_is_the_normalised_channel_mean_and_max():
    # One image, two channels on a 2 x 2 grid: means 2.5 and 0, maxima 4 and 1.
    embeddings = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 1.0], [0.0, 0.0]]]])
    raw = torch.tensor([2.5, 0.0, 4.0, 1.0])
    expected = (raw - raw.mean()) / torch.sqrt(raw.var(unbiased=False) + 1e-5)
    assert torch.allclose(ExamHead.pool(embeddings), expected[None], atol=1e-6)
    # Scaling an embedding does not change its features.
    assert torch.allclose(ExamHead.pool(3 * embeddings), ExamHead.pool(embeddings), atol=1e-5)
    with pytest.raises(ValueError, match="embeddings"):
        ExamHead.pool(embeddings[0])


def test_a_new_head_is_zero_and_draws_nothing_from_the_rng():
    state = torch.random.get_rng_state()
    head = ExamHead(channels=4, num_exams=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    logits = head(torch.randn(2, 4, 3, 3))
    assert logits.shape == (2, 3) and not logits.any()
    with pytest.raises(ValueError, match="num_exams"):
        ExamHead(channels=4, num_exams=0)


def _two_kinds(count: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Kind 0 is bright in channel 0, kind 1 in channel 1; three times as many of kind 0."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.rand(count, 2, 4, 4, generator=generator)
    targets = torch.tensor([0] * (3 * count // 4) + [1] * (count // 4))
    embeddings[targets == 0, 0] += 2.0
    embeddings[targets == 1, 1] += 2.0
    return ExamHead.pool(embeddings), targets


def test_fit_separates_the_kinds_and_is_deterministic():
    features, targets = _two_kinds()
    first, second = ExamHead(2, 2), ExamHead(2, 2)
    stats = fit_exam_head(first, features, targets, steps=100)
    fit_exam_head(second, features, targets, steps=100)
    assert stats["accuracy"] == 1.0 and stats["loss"] < 0.1
    assert torch.equal(first.weight, second.weight)
    assert torch.equal(first.classify(features).argmax(-1), targets)


def test_fit_rejects_bad_inputs():
    features, targets = _two_kinds()
    with pytest.raises(ValueError, match="targets"):
        fit_exam_head(ExamHead(2, 2), features, targets[:-1])
    with pytest.raises(ValueError, match="kind indices"):
        fit_exam_head(ExamHead(2, 2), features, targets + 1)
    with pytest.raises(ValueError, match="steps"):
        fit_exam_head(ExamHead(2, 2), features, targets, steps=0)


def test_allowed_exams_keep_the_likely_kinds_and_always_the_top_one():
    probabilities = torch.tensor([[0.7, 0.25, 0.05], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    assert allowed_exams(probabilities, 0.2) == [[0, 1], [0, 1, 2], [2]]
    assert allowed_exams(probabilities, 1.0) == [[0], [0], [2]]
    exams = {"brain_mri": ("brain",), "chest_ct": ("left lung", "heart")}
    assert labels_of_exams(exams, list(exams), [1]) == ("heart", "left lung")
    assert labels_of_exams(exams, list(exams), [0, 1]) == ("brain", "heart", "left lung")


def test_config_exams_round_trip_and_are_checked():
    config = ModelConfig(labels=["brain", "liver"], exams={"brain_mri": ["brain"]})
    assert config.exams == {"brain_mri": ("brain",)}
    assert ModelConfig.from_dict(config.to_dict()).exams == config.exams
    with pytest.raises(ValueError, match="outside ModelConfig.labels"):
        ModelConfig(labels=["brain"], exams={"chest_ct": ["heart"]})
    with pytest.raises(ValueError, match="maps each named exam kind"):
        ModelConfig(labels=["brain"], exams={"brain_mri": []})
    with pytest.raises(ValueError, match="exam_min_probability"):
        ModelConfig(exam_min_probability=0.0)
    with pytest.raises(ValueError, match="ct_window"):
        ModelConfig(ct_window="rainbow")
    assert ModelConfig(ct_window="lung_mediastinum_bone").ct_window == "lung_mediastinum_bone"


EXAMS = {"abdominal_ct": ("left kidney", "liver"), "brain_mri": ("brain",)}


@pytest.fixture
def exam_model():
    torch.manual_seed(0)
    model = build_model(tiny(), corpus=TINY_CORPUS)
    model.config.labels = ("brain", "left kidney", "liver")
    model.attach_exam_head(EXAMS)
    return model.eval()


def _generate(model, favoured: int, asked: list[str], **kwargs):
    """Constrained answers to ``asked``, one random image each, with the exam head's
    bias set so that it reads every image as kind ``favoured``."""
    with torch.no_grad():
        model.exam_head.bias.zero_()
        model.exam_head.bias[favoured] = 10.0
    builder = model.prompt_builder()
    prompts = [builder.encode([(q, None)]).input_ids for q in asked]
    size = model.config.mask.image_size
    torch.manual_seed(0)
    pixels = torch.rand(len(asked), 3, size, size)
    sizes = torch.tensor([[size, size]] * len(asked))
    return model.generate(
        prompts, sizes, pixel_values=pixels, max_new_tokens=24, constrain_answer=True, **kwargs
    )


def _answers(model, favoured: int, **kwargs):
    """The answer sentences to two questions (see ``_generate``)."""
    answers = _generate(model, favoured, ["Which organ filters the blood?", "Where?"], **kwargs)
    first = model.candidate_token_ids[0]
    kind = list(EXAMS)[favoured]
    assert all(a.exam == kind and a.exam_probability > 0.99 for a in answers)
    return [
        model.tokenizer.decode(a.token_ids[: a.token_ids.index(first)]).strip() for a in answers
    ]


def _openings(labels):
    return {form.format(label=label) for form in ANSWER_FORMS for label in labels}


def test_generation_names_only_labels_of_the_image_exam(exam_model):
    for favoured, kind in enumerate(EXAMS):
        sentences = _answers(exam_model, favoured)
        assert set(sentences) <= _openings(EXAMS[kind]), (kind, sentences)
    # Without the exam constraint, any trained label may be named: the untrained tiny LM
    # names one outside the brain MRI's labels.
    free = _answers(exam_model, 1, constrain_to_exam=False)
    assert set(free) <= _openings(exam_model.config.labels)
    assert not set(free) <= _openings(EXAMS["brain_mri"])


def test_the_exam_head_is_saved_and_loaded(exam_model, tmp_path):
    with torch.no_grad():
        exam_model.exam_head.weight.normal_()
    exam_model.save_pretrained(tmp_path / "model")
    loaded = MediSee.from_pretrained(tmp_path / "model")
    assert loaded.config.exams == EXAMS
    assert torch.equal(loaded.exam_head.weight, exam_model.exam_head.weight)
    # A model saved without one loads without one.
    torch.manual_seed(0)
    plain = build_model(tiny(), corpus=TINY_CORPUS)
    plain.save_pretrained(tmp_path / "plain")
    assert MediSee.from_pretrained(tmp_path / "plain").exam_head is None
    with pytest.raises(ValueError, match="at least one exam kind"):
        plain.attach_exam_head({})


def test_a_question_for_a_structure_the_exam_cannot_show_gets_no_mask(exam_model) -> None:
    # Every image read as a brain MRI: the liver is trained (abdominal CT) but not shown,
    # the spleen never trained; an implicit question is answered as before.
    questions = [
        "Where is the liver?",
        "Segment the spleen.",
        "Which organ filters the blood?",
        "Where are the kidneys?",
    ]
    liver, spleen, implicit, kidneys = _generate(exam_model, 1, questions, questions=questions)
    assert liver.absent is not None and liver.absent.reason == "not_shown"
    assert liver.text.startswith("This looks like a brain MRI, which does not show the liver")
    # Both sides asked for: said as asked, in the plural.
    assert kidneys.absent is not None and kidneys.absent.label == "kidneys"
    assert kidneys.text.startswith("This looks like a brain MRI, which does not show the kidneys")
    assert spleen.absent is not None and spleen.absent.reason == "not_trained"
    for answer in (liver, spleen):
        assert not answer.found_target and answer.mask_logits is None
        assert not set(answer.token_ids) & set(exam_model.candidate_token_ids)
    assert implicit.absent is None and implicit.found_target
    # Without the exam constraint the liver may be named; the spleen still may not.
    free = _generate(exam_model, 1, questions[:2], questions=questions[:2], constrain_to_exam=False)
    assert free[0].absent is None
    assert free[1].absent is not None and free[1].absent.reason == "not_trained"


def test_a_question_that_names_a_shown_structure_is_answered_with_it(exam_model) -> None:
    # Every image read as an abdominal CT: each request names its own structure, whatever
    # the untrained LM would pick; an implicit question may name either label.
    questions = ["Where is the liver?", "Segment the left kidney.", "Where is the kidney?"]
    for _ in range(2):  # both orders, so no label is named by chance alone
        answers = _generate(exam_model, 0, questions, questions=questions)
        first = exam_model.candidate_token_ids[0]
        named = [
            exam_model.tokenizer.decode(a.token_ids[: a.token_ids.index(first)]).strip()
            for a in answers
        ]
        for question, sentence in zip(questions, named):
            label = "liver" if "liver" in question else "left kidney"
            assert sentence in _openings([label]), (question, sentence)
        questions = questions[::-1]


def test_a_question_about_the_image_gets_its_exam_and_no_target(exam_model) -> None:
    questions = ["What is this image?", "What kind of scan is this?"]
    for answer in _generate(exam_model, 1, questions, questions=questions):
        assert answer.text == (
            "This looks like a brain MRI. On a brain MRI I can find the brain. Ask for one "
            "of them by name or by what it does to see it outlined."
        )
        assert not answer.found_target and answer.mask_logits is None and answer.absent is None
    # Read as an abdominal CT, the same question lists that exam's structures.
    (abdomen,) = _generate(exam_model, 0, questions[:1], questions=questions[:1])
    assert abdomen.text.startswith(
        "This looks like an abdominal CT. On an abdominal CT I can find the left kidney and "
        "the liver."
    )


def test_a_question_by_a_general_noun_is_answered_with_a_label_of_its_sort(exam_model) -> None:
    # Read as an abdominal CT (left kidney, liver): "the left organ" is the left kidney;
    # neither "the right organ" nor "the tumour" is any label it shows.
    questions = [
        "Segment the left organ.",
        "Where is the right organ?",
        "Where is the tumour?",
        "Where is the glass?",
    ]
    left, right, tumour, glass = _generate(exam_model, 0, questions, questions=questions)
    first = exam_model.candidate_token_ids[0]
    opening = exam_model.tokenizer.decode(left.token_ids[: left.token_ids.index(first)])
    assert opening.strip() in _openings(["left kidney"])
    for answer, noun in ((right, "a right organ"), (tumour, "a tumor")):
        assert answer.absent is not None and answer.absent.reason == "none_of_sort"
        assert answer.text.startswith(
            f"I was not trained to find {noun} on an abdominal CT, so I cannot segment one."
        )
        assert not answer.found_target and answer.mask_logits is None
    assert glass.absent is None and glass.found_target  # no sort of structure: as before

"""The question prior (``medisee.model.question_prior``): weighted answer tries, the
classifier and its fit, the frozen encoder on a tiny GGUF-built LM, and generation that
follows the prior."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from medisee.data.schema import QAItem, Record, Target
from medisee.model.answer_constraint import (
    ANSWER_FORMS,
    AnswerConstraint,
    TokenTrie,
    answer_sequences_by_label,
    weighted_answer_trie,
)
from medisee.model.config import ModelConfig, QuestionPriorConfig
from medisee.model.medisee import build_model
from medisee.model.presets import tiny
from medisee.model.pretrained_lm import resolve_pretrained_lm
from medisee.model.question_prior import QuestionEncoder, QuestionPrior, fit_question_prior
from medisee.train.prior_fit import allowed_labels, fit_prior, training_questions
from tests.conftest import TINY_CORPUS
from tests.model.gguf_fixture import write_tiny_gguf

# --------------------------------------------------------------------- weighted tries


def test_log_shares_split_each_prefix_mass_by_hand():
    # Masses 0.2 ([1, 2]), 0.3 ([1, 3]) and 0.5 ([4]): at the root, 1 holds 0.5 and 4
    # holds 0.5; after 1, 2 holds 0.2 / 0.5 and 3 holds 0.3 / 0.5.
    trie = TokenTrie([[1, 2], [1, 3], [4]], weights=[0.2, 0.3, 0.5])
    assert trie.weighted
    assert trie.log_shares([], [1, 4]) == pytest.approx([math.log(0.5), math.log(0.5)])
    assert trie.log_shares([1], [2, 3]) == pytest.approx([math.log(0.4), math.log(0.6)])
    plain = TokenTrie([[1, 2], [1, 3]])
    assert not plain.weighted and plain.log_shares([1], [2, 3]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="3 weights for 2"):
        TokenTrie([[1], [2]], weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="one weight per sequence"):
        TokenTrie([[1], [2]], weights=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        TokenTrie([[1]], weights=[-1.0])


def test_processor_adds_the_weighted_log_shares():
    trie = TokenTrie([[1, 2], [3]], weights=[0.25, 0.75])
    scores = torch.tensor([[0.0, 1.0, 0.0, 1.5]])
    out = AnswerConstraint(trie, row_tries={0: trie}, prior_weight=2.0)(
        torch.zeros((1, 0), dtype=torch.long), scores.clone()
    )
    # 1 + 2 log 0.25 = -1.773 against 1.5 + 2 log 0.75 = 0.925: the prior tips it to 3.
    assert out[0, 1].item() == pytest.approx(1.0 + 2 * math.log(0.25))
    assert out[0, 3].item() == pytest.approx(1.5 + 2 * math.log(0.75))
    assert torch.isinf(out[0, [0, 2]]).all()
    # Weight 0: the scores are the LM's own, masked.
    same = AnswerConstraint(trie, row_tries={0: trie}, prior_weight=0.0)(
        torch.zeros((1, 0), dtype=torch.long), scores.clone()
    )
    assert same[0, 1].item() == 1.0 and same[0, 3].item() == 1.5


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = build_model(tiny(), corpus=TINY_CORPUS)
    model.config.labels = ("brain", "left kidney", "liver")
    return model.eval()


def test_weighted_answer_trie_sums_to_each_label_log_probability(tiny_model):
    builder = tiny_model.prompt_builder()
    probabilities = {"left kidney": 0.7, "liver": 0.2, "brain": 0.1}
    by_label = answer_sequences_by_label(builder, probabilities)
    assert tiny_model.answer_openings() == by_label  # the same labels, cached
    trie = weighted_answer_trie(by_label, probabilities)
    with pytest.raises(ValueError, match="no answer openings"):
        weighted_answer_trie(by_label, {"spleen": 1.0})
    for label, openings in by_label.items():
        assert len(openings) == len(ANSWER_FORMS)
        for ids in openings:
            total = sum(trie.log_shares(ids[:i], [ids[i]])[0] for i in range(len(ids)))
            assert total == pytest.approx(math.log(probabilities[label] / len(openings)))


# --------------------------------------------------------------------- the classifier


def test_a_new_prior_is_uniform_and_draws_nothing_from_the_rng():
    state = torch.random.get_rng_state()
    prior = QuestionPrior(width=4, num_labels=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    allowed = torch.tensor([[True, True, False]])
    log_probs = prior.log_probs(torch.randn(1, 4), allowed)
    assert log_probs[0, :2].exp().tolist() == pytest.approx([0.5, 0.5])
    assert log_probs[0, 2].item() == float("-inf")
    with pytest.raises(ValueError, match="num_labels"):
        QuestionPrior(width=4, num_labels=0)


def _questions(count: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label 0 is bright in dimension 0, label 1 in 1, label 2 in 2; label 2's questions
    may not be answered with label 0 (another exam)."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(count) % 3
    features = torch.rand(count, 3, generator=generator)
    features[torch.arange(count), targets] += 2.0
    allowed = torch.ones(count, 3, dtype=torch.bool)
    allowed[targets == 2, 0] = False
    return features, targets, allowed


def test_fit_learns_the_labels_and_is_deterministic():
    features, targets, allowed = _questions()
    first, second = QuestionPrior(3, 3), QuestionPrior(3, 3)
    stats = fit_question_prior(first, features, targets, allowed, steps=200)
    fit_question_prior(second, features, targets, allowed, steps=200)
    assert stats["accuracy"] == 1.0 and stats["loss"] < 0.1 and stats["questions"] == 24
    assert torch.equal(first.weight, second.weight)
    assert torch.allclose(first.mean, features.mean(0))
    assert torch.equal(first.log_probs(features, allowed).argmax(-1), targets)


def test_fit_rejects_bad_inputs():
    features, targets, allowed = _questions()
    with pytest.raises(ValueError, match="do not match"):
        fit_question_prior(QuestionPrior(3, 3), features, targets[:-1], allowed)
    with pytest.raises(ValueError, match="must be allowed"):
        fit_question_prior(QuestionPrior(3, 3), features, torch.zeros_like(targets), allowed)
    with pytest.raises(ValueError, match="N >= 1"):
        fit_question_prior(QuestionPrior(3, 3), features[:0], targets[:0], allowed[:0])


def test_config_round_trips_and_is_checked():
    config = ModelConfig(labels=["liver"], question_prior={"encoder": "x.gguf", "width": 32})
    assert config.question_prior == QuestionPriorConfig("x.gguf", 3, 32, 1.0)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig().question_prior is None
    with pytest.raises(ValueError, match="needs ModelConfig.labels"):
        ModelConfig(question_prior=QuestionPriorConfig())
    with pytest.raises(ValueError, match="layers"):
        QuestionPriorConfig(layers=0)
    with pytest.raises(ValueError, match="weight"):
        QuestionPriorConfig(weight=-1.0)
    with pytest.raises(ValueError, match="encoder"):
        QuestionPriorConfig(encoder=" ")


# --------------------------------------------------------------------- the encoder


@pytest.fixture
def gguf_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDISEE_CACHE", str(tmp_path / "cache"))
    return write_tiny_gguf(tmp_path / "tiny-llama.gguf").path


def test_encoder_pools_the_stream_after_its_first_layers(gguf_path):
    from transformers import AutoModelForCausalLM

    directory = resolve_pretrained_lm(str(gguf_path))
    encoder = QuestionEncoder(directory, layers=1, device="cpu")
    texts = ["which organ filters the blood", "the liver", "the heart is"]
    features = encoder.encode(texts)
    assert features.shape == (3, encoder.width) and encoder.width == 32
    # One text alone (no padding) gives the same row: the order and the padding are undone.
    for row, text in enumerate(texts):
        assert torch.allclose(encoder.encode([text])[0], features[row], atol=1e-5)
    # By hand: the full LM's residual stream after layer 1, before any norm, averaged.
    full = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    ids = encoder.tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        hidden = full.model(**ids, output_hidden_states=True).hidden_states[1]
    assert torch.allclose(features[0], hidden[0].mean(0), atol=1e-5)
    assert encoder.encode([]).shape == (0, 32)
    with pytest.raises(ValueError, match="has 2 layers"):
        QuestionEncoder(directory, layers=3, device="cpu")


def _record(name: str, kind: str, labels_and_questions) -> Record:
    targets = [
        Target(
            label=label,
            mask={"size": [4, 4], "counts": "0"},
            box_xyxy=(0, 0, 1, 1),
            area=1,
            qa=[QAItem("reasoning", "attribute", "short", q, f"It is the {label}.") for q in qs],
        )
        for label, qs in labels_and_questions
    ]
    return Record(
        id=name, image=f"{name}.png", modality="CT", source="toy", source_id=name,
        height=4, width=4, targets=targets, split="train", meta={"kind": kind},
    )  # fmt: skip


def test_training_questions_are_distinct_and_a_seeded_draw():
    records = [
        _record("a", "abdominal_ct", [("liver", ["Which organ makes bile?"] * 2)]),
        _record("b", "brain_mri", [("brain", ["Which organ  thinks?", "What thinks?"])]),
    ]
    every = training_questions(records, 10, seed=0)
    assert every == [
        ("Which organ makes bile?", "liver", "abdominal_ct"),
        ("Which organ thinks?", "brain", "brain_mri"),
        ("What thinks?", "brain", "brain_mri"),
    ]
    two = training_questions(records, 2, seed=0)
    assert len(two) == 2 and set(two) <= set(every)
    assert two == training_questions(records, 2, seed=0)


def test_allowed_labels_are_the_exam_labels_and_the_own_one():
    labels = ["brain", "left kidney", "liver"]
    exams = {"abdominal_ct": ("left kidney", "liver"), "brain_mri": ("brain",)}
    questions = [
        ("q1", "liver", "abdominal_ct"),
        ("q2", "brain", "brain_mri"),
        ("q3", "liver", "brain_mri"),  # its own label, though outside the kind's
        ("q4", "brain", "fundus"),  # a kind without labels: all of them
    ]
    assert allowed_labels(questions, labels, exams).tolist() == [
        [False, True, True],
        [True, False, False],
        [True, False, True],
        [True, True, True],
    ]
    assert allowed_labels(questions[:1], labels, {}).tolist() == [[True, True, True]]


def test_generation_follows_the_fitted_prior(tiny_model, gguf_path):
    """Fit on toy records, then push the prior hard to one label: the constrained answer
    names it; without the prior the reply is the LM's own."""
    records = [
        _record("a", "abdominal_ct", [("liver", ["the liver"]), ("left kidney", ["blood"])]),
        _record("b", "brain_mri", [("brain", ["the heart is"])]),
    ]
    prior = QuestionPriorConfig(encoder=str(gguf_path), layers=1, width=999)
    stats = fit_prior(tiny_model, records, questions=10, prior=prior)
    assert stats["questions"] == 3 and stats["accuracy"] == 1.0
    assert tiny_model.config.question_prior.width == 32  # the encoder's, not the guess
    builder = tiny_model.prompt_builder()
    questions = ["Which organ filters the blood?", "Where?"]
    prompts = [builder.encode([(q, None)]).input_ids for q in questions]
    size = tiny_model.config.mask.image_size
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, size, size)
    sizes = torch.tensor([[size, size]] * 2)
    first = tiny_model.candidate_token_ids[0]

    def sentences(**kwargs):
        answers = tiny_model.generate(
            prompts, sizes, pixel_values=pixels, max_new_tokens=24, constrain_answer=True,
            **kwargs,
        )  # fmt: skip
        return [
            tiny_model.tokenizer.decode(a.token_ids[: a.token_ids.index(first)]).strip()
            for a in answers
        ]

    own = sentences()
    assert own == sentences(questions=questions, use_question_prior=False)
    for favoured in tiny_model.config.labels:
        with torch.no_grad():
            tiny_model.question_prior.weight.zero_()
            tiny_model.question_prior.bias.fill_(-30.0)
            tiny_model.question_prior.bias[tiny_model.config.labels.index(favoured)] = 30.0
        named = sentences(questions=questions)
        openings = {form.format(label=favoured) for form in ANSWER_FORMS}
        assert set(named) <= openings, (favoured, named)
    with pytest.raises(ValueError, match="questions for"):
        sentences(questions=questions[:1])


def test_predictor_passes_each_question_to_the_prior(tiny_model, gguf_path, tmp_path):
    from medisee.inference.predictor import GenerationOptions, Predictor

    records = [_record("a", "abdominal_ct", [("liver", ["the liver"]), ("brain", ["blood"])])]
    fit_prior(tiny_model, records, questions=10, prior=QuestionPriorConfig(str(gguf_path), 1))
    image = torch.rand(40, 50, 3).mul(255).byte().numpy()
    question = "Which organ filters the blood?"
    without = Predictor(tiny_model, GenerationOptions(question_prior=False))
    own = without.predict(question, image=image).raw_text.split(" <cand_0>")[0]
    # Favour a label the LM did not name on its own: the predictor must pass the question.
    favoured = next(label for label in tiny_model.config.labels if label not in own)
    with torch.no_grad():
        tiny_model.question_prior.weight.zero_()
        tiny_model.question_prior.bias.fill_(-30.0)
        tiny_model.question_prior.bias[tiny_model.config.labels.index(favoured)] = 30.0
    reply = Predictor(tiny_model).predict(question, image=image).raw_text
    assert reply.split(" <cand_0>")[0] in {f.format(label=favoured) for f in ANSWER_FORMS}
    # Without the prior the predictor never reads the encoder: a missing one is no error.
    tiny_model.attach_question_prior(QuestionPriorConfig(str(tmp_path / "gone.gguf"), 1, 32))
    Predictor(tiny_model, GenerationOptions(question_prior=False)).predict(question, image=image)
    with pytest.raises(FileNotFoundError, match="--no-question-prior"):
        Predictor(tiny_model).predict(question, image=image)


def test_knowledge_weight_multiplies_in_the_whole_lm_label_scores(tiny_model, gguf_path):
    """With ``knowledge_weight`` k the prior is p_classifier * p_lm ** k over the allowed
    labels, renormalised; at 0 the whole LM is never loaded."""
    from medisee.model.label_knowledge import LabelScorer

    records = [_record("a", "abdominal_ct", [("liver", ["the liver"]), ("brain", ["blood"])])]
    fit_prior(tiny_model, records, questions=10, prior=QuestionPriorConfig(str(gguf_path), 1))
    questions = ["Which organ filters the blood?", "the liver"]
    allowed = [["brain", "left kidney", "liver"], ["left kidney", "liver"]]
    alone = tiny_model.question_label_probabilities(questions, allowed)
    assert "_prior_language_model" not in tiny_model.__dict__
    weight = 1.5
    tiny_model.config.question_prior = dataclasses.replace(
        tiny_model.config.question_prior, knowledge_weight=weight
    )
    combined = tiny_model.question_label_probabilities(questions, allowed)
    causal, tokenizer = tiny_model.prior_language_model()
    known = LabelScorer(causal, tokenizer).log_probs(questions, allowed)
    for first, second, scores in zip(alone, combined, known):
        raw = {label: first[label] * math.exp(weight * scores[label]) for label in first}
        total = sum(raw.values())
        for label, value in raw.items():
            assert second[label] == pytest.approx(value / total, rel=1e-4, abs=1e-7)
    assert combined != alone
    # unfamiliar_weight a: p_classifier ** a * p_lm ** k on the questions the LM reads
    # (here all of them: no familiarity); at 0 the LM's scores alone, still renormalised.
    for exponent in (0.5, 0.0):
        tiny_model.config.question_prior = dataclasses.replace(
            tiny_model.config.question_prior, unfamiliar_weight=exponent
        )
        tempered = tiny_model.question_label_probabilities(questions, allowed)
        for first, third, scores in zip(alone, tempered, known):
            raw = {
                label: first[label] ** exponent * math.exp(weight * scores[label])
                for label in first
            }
            total = sum(raw.values())
            for label, value in raw.items():
                assert third[label] == pytest.approx(value / total, rel=1e-4, abs=1e-7)


def test_familiarity_is_the_mahalanobis_distance_to_the_training_questions():
    from medisee.model.question_prior import fit_familiarity

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 4, generator=generator) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    prior = QuestionPrior(4, 2, familiarity=True)
    assert not prior.unfamiliar(features).any()  # nothing is unfamiliar before a fit
    with torch.no_grad():
        prior.mean.copy_(features.mean(0))
        prior.scale.copy_(features.std(0, unbiased=False))
    farthest = fit_familiarity(prior, features, ridge=1e-3)
    # By hand: the standardised features' covariance, ridge on its diagonal, inverted.
    z = (features - features.mean(0)) / features.std(0, unbiased=False)
    precision = torch.linalg.inv(torch.cov(z.T) + 1e-3 * torch.eye(4))
    by_hand = ((z @ precision) * z).sum(1).sqrt()
    assert torch.allclose(prior.distance(features), by_hand, atol=1e-4)
    assert farthest == pytest.approx(float(by_hand.max()), abs=1e-4)
    assert not prior.unfamiliar(features).any()  # every training question is familiar
    far = features.mean(0, keepdim=True) + torch.tensor([[0.0, 0.0, 0.0, 30.0]])
    assert prior.unfamiliar(far).tolist() == [True]
    with pytest.raises(ValueError, match="without familiarity"):
        QuestionPrior(4, 2).distance(features)
    with pytest.raises(ValueError, match="N >= 2"):
        fit_familiarity(prior, features[:1])


def test_only_unfamiliar_questions_are_read_by_the_whole_lm(tiny_model, gguf_path, monkeypatch):
    from medisee.model import label_knowledge

    records = [_record("a", "abdominal_ct", [("liver", ["the liver"]), ("brain", ["blood"])])]
    prior = QuestionPriorConfig(str(gguf_path), 1, knowledge_weight=1.0, familiarity=True)
    stats = fit_prior(tiny_model, records, questions=10, prior=prior)
    assert stats["familiar_distance"] > 0
    assert tiny_model.question_prior.familiarity
    asked: list[str] = []
    scorer = label_knowledge.LabelScorer.log_probs

    def recording(self, questions, allowed, batch_size=16):
        asked.extend(questions)
        return scorer(self, questions, allowed, batch_size)

    monkeypatch.setattr(label_knowledge.LabelScorer, "log_probs", recording)
    encoder = tiny_model.question_encoder()
    questions = ["the liver", "Which organ filters the blood of a patient who is sick?"]
    unfamiliar = tiny_model.question_prior.unfamiliar(encoder.encode(questions)).tolist()
    assert unfamiliar == [False, True]  # a training question, and one unlike both
    allowed = [["brain", "liver"]] * 2
    tiny_model.question_label_probabilities(questions, allowed)
    assert asked == [q for q, u in zip(questions, unfamiliar) if u]


def test_a_prior_with_familiarity_round_trips(tiny_model, gguf_path, tmp_path):
    records = [_record("a", "abdominal_ct", [("liver", ["the liver"]), ("brain", ["blood"])])]
    prior = QuestionPriorConfig(str(gguf_path), 1, familiarity=True)
    fit_prior(tiny_model, records, questions=10, prior=prior)
    tiny_model.save_pretrained(tmp_path / "model")
    loaded = type(tiny_model).from_pretrained(tmp_path / "model")
    assert loaded.config.question_prior == tiny_model.config.question_prior
    for name in ("precision_triangle", "familiar_distance", "mean", "weight"):
        assert torch.equal(
            getattr(loaded.question_prior, name), getattr(tiny_model.question_prior, name)
        )


def test_channel_weight_multiplies_in_the_channel_scores(tiny_model, gguf_path):
    """With ``channel_weight`` c the prior is p_classifier ** a * p_lm ** k * p_channel ** c
    on the questions the whole LM reads, renormalised over the allowed labels."""
    from medisee.model.label_knowledge import ChannelScorer, LabelScorer

    records = [_record("a", "abdominal_ct", [("liver", ["the liver"]), ("brain", ["blood"])])]
    fit_prior(tiny_model, records, questions=10, prior=QuestionPriorConfig(str(gguf_path), 1))
    questions = ["Which organ filters the blood?", "the liver"]
    allowed = [["brain", "left kidney", "liver"], ["left kidney", "liver"]]
    alone = tiny_model.question_label_probabilities(questions, allowed)
    exponent, weight, channel_weight = 0.5, 1.0, 2.0
    tiny_model.config.question_prior = dataclasses.replace(
        tiny_model.config.question_prior,
        knowledge_weight=weight,
        unfamiliar_weight=exponent,
        channel_weight=channel_weight,
    )
    combined = tiny_model.question_label_probabilities(questions, allowed)
    causal, tokenizer = tiny_model.prior_language_model()
    known = LabelScorer(causal, tokenizer).log_probs(questions, allowed)
    written = ChannelScorer(causal, tokenizer).log_probs(questions, allowed)
    for first, second, scores, channel in zip(alone, combined, known, written):
        raw = {
            label: first[label] ** exponent
            * math.exp(weight * scores[label] + channel_weight * channel[label])
            for label in first
        }
        total = sum(raw.values())
        for label, value in raw.items():
            assert second[label] == pytest.approx(value / total, rel=1e-4, abs=1e-7)
    without = dataclasses.replace(tiny_model.config.question_prior, channel_weight=0.0)
    tiny_model.config.question_prior = without
    assert tiny_model.question_label_probabilities(questions, allowed) != combined
    with pytest.raises(ValueError, match="channel_weight"):
        QuestionPriorConfig(channel_weight=-1.0)


def test_the_whole_lm_reads_each_distinct_question_once(tiny_model, gguf_path, monkeypatch):
    """Across calls (an evaluation's batches) a question with the same labels and rule is
    scored once; another label set, another rule or a full memo scores again."""
    from medisee.model import medisee as medisee_module

    records = [_record("a", "abdominal_ct", [("liver", ["the liver"]), ("brain", ["blood"])])]
    prior = QuestionPriorConfig(str(gguf_path), 1, knowledge_weight=1.0)
    fit_prior(tiny_model, records, questions=10, prior=prior)
    tiny_model.config.question_prior = prior
    read: list[str] = []
    scorer = type(tiny_model)._whole_lm_label_scores

    def counted(self, keys, rule):
        read.extend(question for _, question, _ in keys)
        return scorer(self, keys, rule)

    monkeypatch.setattr(type(tiny_model), "_whole_lm_label_scores", counted)
    labels = ["brain", "liver"]
    first = tiny_model.question_label_probabilities(["q one", "q two", "q one"], [labels] * 3)
    assert read == ["q one", "q two"] and first[0] == first[2]
    again = tiny_model.question_label_probabilities(["q two", "q one"], [labels] * 2)
    assert read == ["q one", "q two"] and again == [first[1], first[0]]
    tiny_model.question_label_probabilities(["q one"], [["liver", "brain", "left kidney"]])
    tiny_model.config.question_prior = dataclasses.replace(prior, channel_weight=1.0)
    tiny_model.question_label_probabilities(["q one"], [labels])
    assert read == ["q one", "q two", "q one", "q one"]
    monkeypatch.setattr(medisee_module, "KNOWLEDGE_MEMO_SIZE", 1)
    tiny_model.question_label_probabilities(["q three", "q one"], [labels] * 2)
    assert read[-2:] == ["q three", "q one"]  # the memo started over, this call's kept


def test_side_penalty_lowers_the_other_sides_labels(tiny_model, gguf_path):
    """A question that names the patient's side takes ``side_penalty`` from the
    log-probability of the other side's labels, then renormalises; a question that
    names no side is unchanged."""
    records = [_record("a", "abdominal_ct", [("liver", ["the liver"]), ("brain", ["blood"])])]
    fit_prior(tiny_model, records, questions=10, prior=QuestionPriorConfig(str(gguf_path), 1))
    questions = ["Which organ on the patient's right cleans the blood?", "the liver"]
    allowed = [["brain", "left kidney", "liver"]] * 2
    before = tiny_model.question_label_probabilities(questions, allowed)
    penalty = 3.0
    tiny_model.config.question_prior = dataclasses.replace(
        tiny_model.config.question_prior, side_penalty=penalty
    )
    after = tiny_model.question_label_probabilities(questions, allowed)
    raw = {label: before[0][label] for label in allowed[0]}
    raw["left kidney"] *= math.exp(-penalty)
    total = sum(raw.values())
    for label, value in raw.items():
        assert after[0][label] == pytest.approx(value / total, rel=1e-4, abs=1e-7)
    assert after[0]["left kidney"] < before[0]["left kidney"]
    assert after[1] == pytest.approx(before[1], rel=1e-5)  # no side named
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="side_penalty"):
            QuestionPriorConfig(side_penalty=bad)

"""Follow-ups answered from the pretrained LM's own knowledge (``inference/knowledge.py``),
on the tiny GGUF-built LM under LoRA and on the from-scratch tiny LM."""

import numpy as np
import pytest
import torch

from medisee.inference import knowledge
from medisee.inference.knowledge import (
    answer_follow_up,
    asks_about_subject,
    asks_for_region,
    knowledge_reply,
    model_turn,
    resolve_follow_up,
    subject_of,
    supports_knowledge,
)
from medisee.inference.outputs import complete_sentences
from medisee.inference.predictor import Prediction, Predictor
from tests.model.gguf_fixture import build_tiny_pretrained_model, write_tiny_gguf


@pytest.mark.parametrize(
    ("reply", "subject"),
    [
        ("It is the left kidney. It filters the blood.", "left kidney"),
        ("That is the liver.", "liver"),
        ("Those are the lungs! They exchange gases.", "lungs"),
        ("it is white matter.", "white matter"),
        ("Sure, this is the brain. It thinks.", "brain"),  # a referring question's answer
        ("Yes, that is the spleen.", "spleen"),
        ("The liver makes bile.", None),  # not an answer sentence
        ("", None),
    ],
)
def test_subject_of_reads_the_answer_sentence(reply, subject):
    assert subject_of(reply) == subject


@pytest.mark.parametrize(
    ("question", "resolved"),
    [
        ("What does it do?", "What does the left kidney do?"),
        ("What is its role?", "What is the left kidney's role?"),
        ("What is that structure for?", "What is the left kidney for?"),
        (
            "Is it paired? Where does it sit?",
            "Is the left kidney paired? Where does the left kidney sit?",
        ),
        ("What lies next to the spleen?", "What lies next to the spleen?"),  # nothing to resolve
        ("What does digit mean?", "What does digit mean?"),  # "it" inside a word stays
        (
            "What is their role? Do they grow?",
            "What is the left kidney's role? Do the left kidney grow?",
        ),
    ],
)
def test_resolve_follow_up_replaces_pronouns(question, resolved):
    assert resolve_follow_up(question, "left kidney") == resolved


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf").path


@pytest.fixture
def models(gguf_path, tmp_path, monkeypatch):
    """The same pretrained tiny LM twice: as built (LoRA B = 0, so the base LM) and with
    its LoRA and new-token rows moved, as training would."""
    monkeypatch.setenv("MEDISEE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = build_tiny_pretrained_model(gguf_path).eval()
    tuned = build_tiny_pretrained_model(gguf_path).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in tuned.language.model.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    return base, tuned


def _logits(model, ids, adapters_off):
    language = model.language.model
    with torch.no_grad():
        if adapters_off:
            with language.disable_adapter():
                return language(input_ids=ids).logits
        return language(input_ids=ids).logits


def test_knowledge_replies_come_from_the_base_lm(models):
    base, tuned = models
    assert supports_knowledge(base) and supports_knowledge(tuned)
    ids = torch.tensor(
        [tuned.tokenizer("what does the kidney do", add_special_tokens=False)["input_ids"]]
    )
    # The adapters change the LM; turned off, it is the base LM again.
    assert not torch.allclose(_logits(tuned, ids, False), _logits(base, ids, False))
    torch.testing.assert_close(_logits(tuned, ids, True), _logits(base, ids, False))
    reply = knowledge_reply(tuned, "What does it do?", "kidney", max_new_tokens=8)
    assert reply == knowledge_reply(base, "What does it do?", "kidney", max_new_tokens=8)
    assert tuned.language.model.training is False  # mode restored


def test_a_saved_model_keeps_its_adapters_and_its_knowledge(models, tmp_path):
    from medisee.model.medisee import MediSee

    base, tuned = models
    tuned.save_pretrained(tmp_path / "model")
    loaded = MediSee.from_pretrained(tmp_path / "model").eval()
    assert supports_knowledge(loaded)
    reply = knowledge_reply(loaded, "What does it do?", "kidney", max_new_tokens=8)
    assert reply == knowledge_reply(base, "What does it do?", "kidney", max_new_tokens=8)


def test_the_from_scratch_lm_has_no_knowledge_to_ask():
    from tests.inference.helpers import make_tiny_model

    model = make_tiny_model()
    assert not supports_knowledge(model)
    with pytest.raises(ValueError, match="pretrained LM"):
        knowledge_reply(model, "What does it do?", "kidney")


def _prediction(question, text, found):
    mask = np.zeros((8, 8), bool)
    mask[1:4, 1:4] = found
    return Prediction(
        mask=mask,
        box=(1.0, 1.0, 4.0, 4.0) if found else None,
        text=text,
        scores={"found_target": found},
        question=question,
        raw_text=text,
    )


def _fake_knowledge(monkeypatch, reply: str) -> list[tuple[str, str]]:
    """``knowledge_reply`` replaced by one that answers ``reply``; the returned list
    collects each call's ``(question, subject)``."""
    asked: list[tuple[str, str]] = []

    def fake_reply(model, question, subject, **kwargs):
        asked.append((question, subject))
        return reply

    monkeypatch.setattr(knowledge, "knowledge_reply", fake_reply)
    return asked


def test_conversation_answers_text_turns_from_knowledge(models, monkeypatch):
    _, tuned = models
    predictor = Predictor(tuned)
    replies = iter(
        [
            _prediction(
                "Which organ filters the blood?", "It is the left kidney. It filters.", True
            ),
            _prediction("What does it do?", "The kidney filters the blood.", False),
            _prediction("And the one above it?", "That is the spleen.", True),
        ]
    )
    monkeypatch.setattr(predictor, "predict", lambda *args, **kwargs: next(replies))
    asked = _fake_knowledge(monkeypatch, "It removes waste from the blood and makes urine.")
    image = np.zeros((64, 64, 3), np.uint8)
    chat = predictor.conversation(image)
    first = chat.ask("Which organ filters the blood?")
    second = chat.ask("What does it do?")
    third = chat.ask("And the one above it?")
    assert asked == [("What does it do?", "left kidney")]
    assert [p.scores["reply"] for p in (first, second, third)] == ["model", "knowledge", "model"]
    assert second.text == second.raw_text == "It removes waste from the blood and makes urine."
    assert chat.history[1] == ("What does it do?", second.text)
    assert chat.subject == "spleen"
    # Without knowledge, the fine-tuned reply stands.
    replies = iter(
        [
            _prediction("q", "It is the liver.", True),
            _prediction("What does it do?", "The liver makes bile.", False),
        ]
    )
    plain = predictor.conversation(image, knowledge=False)
    plain.ask("q")
    assert plain.ask("What does it do?").text == "The liver makes bile." and len(asked) == 1


def test_a_structure_the_image_cannot_show_stays_the_reply_and_becomes_it(models, monkeypatch):
    _, tuned = models
    predictor = Predictor(tuned)
    absent_text = "This looks like a brain MRI, which does not show the liver."
    turn = _prediction("Where is the liver?", absent_text, False)
    turn.scores["absent"] = {"label": "liver", "reason": "not_shown"}
    replies = iter([turn, _prediction("What does it do?", "The skull.", True)])
    monkeypatch.setattr(predictor, "predict", lambda *args, **kwargs: next(replies))
    asked = _fake_knowledge(monkeypatch, "The liver makes bile.")
    chat = predictor.conversation(np.zeros((64, 64, 3), np.uint8))
    first = chat.ask("Where is the liver?")
    assert first.text == absent_text and first.scores["reply"] == "model"
    assert chat.subject == "liver"
    # "it" is the liver: the knowledge LM answers, and the model's stray target is dropped.
    second = chat.ask("What does it do?")
    assert asked == [("What does it do?", "liver")] and second.text == "The liver makes bile."
    assert not second.found_target


@pytest.mark.parametrize(
    ("question", "answered", "about"),
    [
        ("What does it do?", "left kidney", True),
        ("What is its role in the body?", "left kidney", True),
        ("What does that organ do?", "Left Kidney", True),  # case does not matter
        ("What does it do?", "liver", False),  # another structure: a new target
        ("Where is it?", "left kidney", False),  # asks for a region
        ("Segment it again.", "left kidney", False),
        ("Show me its outline.", "left kidney", False),
        ("What does the kidney do?", "left kidney", False),  # does not refer back
        ("What do they do?", "left kidney", True),
        ("What is their role?", None, True),  # the reply names no structure
        ("Where are they?", None, False),
    ],
)
def test_asks_about_subject_by_hand(question, answered, about):
    assert asks_about_subject(question, "left kidney", answered) is about
    assert asks_about_subject(question, None, answered) is False  # no subject yet


@pytest.fixture
def prior_model(gguf_path, tmp_path, monkeypatch):
    """The from-scratch tiny LM with a question prior whose encoder is the tiny GGUF LM."""
    from medisee.model.config import QuestionPriorConfig
    from tests.inference.helpers import make_tiny_model

    monkeypatch.setenv("MEDISEE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = make_tiny_model()
    model.config.labels = ("left kidney", "liver")
    model.attach_question_prior(QuestionPriorConfig(str(gguf_path), layers=1, width=32))
    return model.eval()


def test_a_question_prior_lm_answers_the_follow_ups(prior_model, gguf_path):
    """Without adapters, the prior's encoder LM, whole, is asked in its chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medisee.model.pretrained_lm import resolve_pretrained_lm

    assert supports_knowledge(prior_model)
    reply = knowledge_reply(prior_model, "What does it do?", "kidney", max_new_tokens=8)
    # By hand: the same LM loaded on its own, asked the resolved question.
    directory = resolve_pretrained_lm(str(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    causal = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    messages = [
        {"role": "system", "content": knowledge.KNOWLEDGE_SYSTEM},
        {"role": "user", "content": "What does the kidney do?"},
    ]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    prompt = torch.tensor([list(ids)])
    with torch.no_grad():
        output = causal.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
            do_sample=False, pad_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
    expected = tokenizer.decode(output[0, prompt.shape[1] :].tolist(), skip_special_tokens=True)
    assert reply == complete_sentences(expected)
    # Loaded once, kept off the module tree (never saved, never moved by .to()).
    cached = prior_model.__dict__["_prior_language_model"]
    knowledge_reply(prior_model, "What is it?", "kidney", max_new_tokens=2)
    assert prior_model.__dict__["_prior_language_model"] is cached
    assert not any("_prior_language_model" in name for name, _ in prior_model.named_modules())


def test_a_follow_up_about_the_subject_keeps_its_mask_and_gets_knowledge(prior_model, monkeypatch):
    monkeypatch.setattr(
        knowledge, "knowledge_reply", lambda model, question, subject, **kw: f"About {subject}."
    )
    first = _prediction("Which organ filters the blood?", "It is the left kidney.", True)
    same = _prediction("What does it do?", "It is the left kidney.", True)
    where = _prediction("Where is it?", "It is the left kidney.", True)
    other = _prediction("What does it do?", "It is the liver.", True)
    _, subject = answer_follow_up(prior_model, first, None)
    assert subject == "left kidney"
    about, kept = answer_follow_up(prior_model, same, subject)
    assert (about.text, about.scores["reply"], kept) == ("About left kidney.", "knowledge", subject)
    assert about.box == same.box and about.mask is same.mask  # the region stays
    for turn, new_subject in ((where, "left kidney"), (other, "liver")):
        answered, after = answer_follow_up(prior_model, turn, subject)
        assert (answered.text, answered.scores["reply"], after) == (
            turn.text, "model", new_subject,
        )  # fmt: skip
    # A target whose reply names no structure answers nothing asked: it is dropped.
    for reply in ("The heart. It pumps.", "It is found inside the abdomen."):  # no label
        unnamed = _prediction("What is its role?", reply, True)
        answered, after = answer_follow_up(prior_model, unnamed, subject)
        assert (answered.text, answered.scores["reply"], after) == (
            "About left kidney.", "knowledge", subject,
        )  # fmt: skip
        assert answered.box is None and not answered.mask.any() and not answered.found_target
        assert answered.scores["found_target"] is False and answered.scores["mask_pixels"] == 0
    # Turned off, the model's reply stands.
    plain, _ = answer_follow_up(prior_model, same, subject, enabled=False)
    assert plain.scores["reply"] == "model" and plain.text == same.text


@pytest.mark.parametrize(
    ("question", "region"),
    [
        ("Segment the liver.", True),
        ("Where is it?", True),
        # A structure of the image, asked for without a region word: a new target.
        ("Which structure here lets us think?", True),
        ("Which part of this scan holds the fluid?", True),
        ("What organ in this image filters the blood?", True),
        ("Which blood vessel shown carries blood to the brain?", True),
        # A structure asked for by name, with no region word: its answer, or why none.
        ("Is there a lung tumor here?", True),
        ("Can you detect the liver?", True),
        ("Is there a tumour?", True),  # by a general noun (asked_structure.generic_request)
        ("Is there anything else?", False),
        # About the conversation's structure, or not about the image: no region.
        ("What organ is it part of?", False),
        ("What tissue is it made of?", False),
        ("Which structure lies next to it?", False),
        ("What does it do here?", False),
        ("Is this image a CT?", False),
    ],
)
def test_asks_for_region_by_hand(question, region):
    assert asks_for_region(question) is region


def test_a_region_follow_up_is_asked_as_a_first_turn():
    history = [("Which organ filters the blood?", "It is the left kidney. <cand_0>")]
    assert model_turn("Where is it?", history, "left kidney") == ("Where is the left kidney?", ())
    assert model_turn("Segment the liver.", history, "left kidney") == ("Segment the liver.", ())
    assert model_turn("Where is it?", history, None) == ("Where is it?", ())
    # Other turns keep the conversation; a first turn has none to drop.
    assert model_turn("What does it do?", history, "left kidney") == (
        "What does it do?", tuple(history),
    )  # fmt: skip
    assert model_turn("Segment the liver.", (), None) == ("Segment the liver.", ())
    # A question for a structure of the image is a new target, its "it" resolved too.
    assert model_turn("Which structure here lies next to it?", history, "left kidney") == (
        "Which structure here lies next to the left kidney?", (),
    )  # fmt: skip


def test_the_conversation_asks_region_follow_ups_alone(models, monkeypatch):
    _, tuned = models
    predictor = Predictor(tuned)
    calls = []
    replies = iter(
        [
            _prediction("Which organ filters the blood?", "It is the left kidney.", True),
            _prediction("Where is the left kidney?", "It is the left kidney.", True),
        ]
    )

    def predict(question, history, **kwargs):
        calls.append((question, tuple(history)))
        return next(replies)

    monkeypatch.setattr(predictor, "predict", predict)
    chat = predictor.conversation(np.zeros((64, 64, 3), np.uint8))
    chat.ask("Which organ filters the blood?")
    second = chat.ask("Where is it?")
    assert calls == [("Which organ filters the blood?", ()), ("Where is the left kidney?", ())]
    assert second.question == "Where is it?" and chat.history[1][0] == "Where is it?"


def test_a_reply_that_cannot_tell_presence_still_names_its_subject(models, monkeypatch):
    _, tuned = models
    predictor = Predictor(tuned)
    hedged = "I cannot tell from the image whether there is a liver; the region most like one."
    turn = _prediction("Is there a liver here?", hedged, True)
    turn.scores["presence_unknown"] = "liver"
    replies = iter([turn, _prediction("What does it do?", "The skull.", True)])
    monkeypatch.setattr(predictor, "predict", lambda *args, **kwargs: next(replies))
    asked = _fake_knowledge(monkeypatch, "The liver makes bile.")
    chat = predictor.conversation(np.zeros((64, 64, 3), np.uint8))
    chat.ask("Is there a liver here?")
    assert chat.subject == "liver"
    assert chat.ask("What does it do?").text == "The liver makes bile."
    assert asked == [("What does it do?", "liver")]

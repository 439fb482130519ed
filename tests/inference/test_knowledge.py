"""Follow-ups answered from the pretrained LM's own knowledge (``inference/knowledge.py``),
on the tiny GGUF-built LM under LoRA and on the from-scratch tiny LM."""

import numpy as np
import pytest
import torch

from medisee.inference import knowledge
from medisee.inference.knowledge import (
    knowledge_reply,
    resolve_follow_up,
    subject_of,
    supports_knowledge,
)
from medisee.inference.predictor import Prediction, Predictor
from tests.model.gguf_fixture import build_tiny_pretrained_model, write_tiny_gguf


@pytest.mark.parametrize(
    ("reply", "subject"),
    [
        ("It is the left kidney. It filters the blood.", "left kidney"),
        ("That is the liver.", "liver"),
        ("Those are the lungs! They exchange gases.", "lungs"),
        ("it is white matter.", "white matter"),
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
    return Prediction(
        mask=np.zeros((8, 8), bool),
        box=(1.0, 1.0, 4.0, 4.0) if found else None,
        text=text,
        scores={"found_target": found},
        question=question,
        raw_text=text,
    )


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
    asked = []

    def fake_reply(model, question, subject, **kwargs):
        asked.append((question, subject))
        return "It removes waste from the blood and makes urine."

    monkeypatch.setattr(knowledge, "knowledge_reply", fake_reply)
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

"""The lite backbone on a pretrained LM, end to end on a tiny GGUF built like SmolLM2's:
GGUF -> cached HF directory -> MediSee with LoRA and ChatML -> a training step, generation
and a save/load round trip."""

import pytest
import torch

from medisee.losses import LossWeights
from medisee.model.medisee import MediSee
from medisee.model.tokenizer import IMAGE_TOKEN, candidate_token_strings
from medisee.train.task import MediSeeTask
from tests.model.gguf_fixture import build_tiny_pretrained_model, write_tiny_gguf


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf").path


@pytest.fixture
def pretrained_model(gguf_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDISEE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return build_tiny_pretrained_model(gguf_path)


def _batch(model):
    builder = model.prompt_builder()
    encoded = builder.encode(
        [("Which organ filters the blood?", builder.answer_text("It is the kidney.", "Urine."))]
    )
    size = model.config.mask.image_size
    return {
        "input_ids": torch.tensor([encoded.input_ids] * 2),
        "attention_mask": torch.ones(2, len(encoded.input_ids), dtype=torch.long),
        "labels": torch.tensor([encoded.labels] * 2),
        "image_sizes": torch.tensor([[48, 64], [64, 64]]),
        "pixel_values": torch.rand(2, 3, size, size),
        "target_masks": torch.zeros(2, size, size),
        "target_boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.4, 0.2, 0.1]]),
    }


def test_the_pretrained_lm_keeps_its_tokenizer_and_gets_the_new_tokens(pretrained_model):
    tokenizer = pretrained_model.tokenizer
    assert "<|im_start|>" in tokenizer.get_vocab()  # the GGUF's own vocabulary
    ids = tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, *candidate_token_strings(2)])
    assert len(set(ids)) == 3 and min(ids) >= 333  # appended after the 333 pretrained
    embeddings = pretrained_model.language.base_model.get_input_embeddings()
    assert embeddings.weight.shape[0] == len(tokenizer)
    encoded = pretrained_model.prompt_builder().encode([("Which organ?", None)])
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>user\n<image>") and text.endswith("<|im_start|>assistant\n")


def test_only_lora_new_rows_and_heads_train(pretrained_model):
    trainable = {n for n, p in pretrained_model.named_parameters() if p.requires_grad}
    lm = {n for n in trainable if n.startswith("language.model.")}
    assert lm and all("lora_" in n or "trainable_tokens" in n for n in lm)
    assert any(n.startswith("language.projector.") for n in trainable)
    assert not any(n.startswith("segmenter.image_encoder.") for n in trainable)


def test_a_training_step_moves_lora_and_the_candidate_rows(pretrained_model):
    task = MediSeeTask(pretrained_model, LossWeights(), "end2end", "target")
    parameters = [p for p in task.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in pretrained_model.named_parameters()}
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    losses = task(_batch(pretrained_model), decode_masks=True)
    assert torch.isfinite(losses.total)
    losses.total.backward()
    optimizer.step()
    moved = {n for n, p in pretrained_model.named_parameters() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in moved) and any("trainable_tokens" in n for n in moved)
    assert not any(n.endswith("embed_tokens.weight") and "trainable" not in n for n in moved)


@torch.no_grad()
def _forward(model, batch):
    keys = ("input_ids", "attention_mask", "image_sizes")
    return model(*(batch[k] for k in keys), pixel_values=batch["pixel_values"])


def test_save_load_and_generate(pretrained_model, tmp_path):
    pretrained_model.eval()
    batch = _batch(pretrained_model)
    before = _forward(pretrained_model, batch)
    pretrained_model.save_pretrained(tmp_path / "model")
    loaded = MediSee.from_pretrained(tmp_path / "model").eval()
    after = _forward(loaded, batch)
    torch.testing.assert_close(after.logits, before.logits)
    torch.testing.assert_close(after.boxes, before.boxes)
    prompt = loaded.prompt_builder().encode([("Which organ filters the blood?", None)]).input_ids
    answers = loaded.generate(
        [prompt], batch["image_sizes"][:1], pixel_values=batch["pixel_values"][:1], max_new_tokens=3
    )
    assert len(answers) == 1 and len(answers[0].token_ids) <= 3

"""Predictor: file round trips, frames on non-square images, caching, history, batches,
seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medisee.boxes import clip_box, denormalize_box
from medisee.inference.predictor import Predictor
from medisee.model.medisee import GeneratedAnswer
from tests.inference.helpers import sample_image, write_ct_dicom


def _teacher_forced(predictor: Predictor, state, prediction):
    """Box and mask of a teacher-forced pass over prompt + the reply the model gave."""
    model = predictor.model
    tokenizer = model.tokenizer
    prompt = predictor.prompt_ids(prediction.question)
    reply = tokenizer(" " + prediction.raw_text, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + reply + [tokenizer.eos_token_id]])
    sizes = torch.tensor([state.size])
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), sizes, image_embeddings=state.embedding[None])
    mask = state.frame.mask_logits_to_original(out.mask_logits[:, None])[0, 0] > 0
    return out.boxes[0], mask.numpy()


def test_png_round_trip_box_and_mask_in_the_original_frame_of_a_non_square_image(echo, tmp_path):
    height, width = 48, 112  # wide: a square-image assumption would put y in the wrong place
    path = tmp_path / "wide.png"
    Image.fromarray(sample_image(height, width)).save(path)
    state = echo.set_image(path)
    assert state.size == (height, width)
    prediction = echo.predict("Which organ filters the blood?")

    assert prediction.found_target and prediction.scores["found_target"]
    assert prediction.text.startswith("Echo: Which organ filters the blood?")
    assert "<cand_0>" not in prediction.text and "<cand_0><cand_1>" in prediction.raw_text
    assert prediction.mask.shape == (height, width) and prediction.mask.dtype == bool
    # The pixel box is the model's normalised box mapped with (W, H), clipped.
    normalized = torch.tensor(prediction.box_normalized)
    expected = clip_box(denormalize_box(normalized, (height, width)), (height, width))
    assert prediction.box == pytest.approx(expected.tolist(), abs=1e-4)
    cx, cy, w, h = prediction.box_normalized
    assert prediction.box[0] == pytest.approx(max(0.0, (cx - w / 2) * width), abs=1e-3)
    assert prediction.box[3] == pytest.approx(min(height, (cy + h / 2) * height), abs=1e-3)
    # ... and it is the box (and mask) a teacher-forced pass gives on the same sequence.
    box, mask = _teacher_forced(echo, state, prediction)
    torch.testing.assert_close(normalized, box.float(), atol=1e-5, rtol=1e-5)
    assert np.array_equal(prediction.mask, mask)
    assert prediction.scores["mask_pixels"] == int(mask.sum())
    assert isinstance(prediction.scores["iou"], float)

    files = prediction.save(tmp_path / "out")
    written = np.asarray(Image.open(files["mask"]))
    assert written.shape == (height, width) and np.array_equal(written > 127, prediction.mask)
    box_json = json.loads(files["box"].read_text())
    assert box_json["image_size"] == {"height": height, "width": width}
    assert box_json["box_xyxy"] == pytest.approx(list(prediction.box), abs=1e-3)
    assert files["text"].read_text().strip() == prediction.text
    overlay = np.asarray(Image.open(files["overlay"]))
    assert overlay.shape[1] >= 384 and overlay.shape[0] > overlay.shape[1] * height / width


def test_dicom_round_trip_with_ct_windowing(echo, tmp_path):
    values = np.full((40, 72), -1000.0)  # air
    values[8:32, 10:60] = 40.0  # soft tissue
    values[15:25, 20:30] = 700.0  # bone
    path = tmp_path / "ct.dcm"
    write_ct_dicom(path, values)

    abdomen = echo.set_image(path)  # no window in the header: the CT default (abdomen)
    assert abdomen.image.meta.format == "dicom" and abdomen.image.meta.modality == "CT"
    assert abdomen.image.meta.window == (40.0, 400.0)
    assert abdomen.image.pixels[20, 40, 0] == 128  # 40 HU at the window centre
    lung = echo.set_image(path, window="lung")
    assert lung.image.meta.window == (-600.0, 1500.0)
    assert not np.array_equal(abdomen.image.pixels, lung.image.pixels)
    prediction = echo.predict("Where is the bone?")
    assert prediction.found_target and prediction.mask.shape == (40, 72)
    assert 0 <= prediction.box[0] <= prediction.box[2] <= 72
    assert 0 <= prediction.box[1] <= prediction.box[3] <= 40


def test_a_ct_is_shown_as_the_model_was_trained_to_see_ct(echo, tmp_path):
    values = np.full((40, 72), -1000.0)
    values[8:32, 10:60] = 40.0
    values[15:25, 20:30] = 700.0
    path = tmp_path / "ct.dcm"
    write_ct_dicom(path, values, window=(40.0, 400.0))
    echo.model.config.ct_window = "lung_mediastinum_bone"
    state = echo.set_image(path)  # "auto": the model's display, not the header's window
    assert state.image.meta.extra["windows"] == [[-600.0, 1500.0], [50.0, 350.0], [400.0, 1800.0]]
    red, green, blue = (state.image.pixels[20, 40, c] for c in range(3))  # 40 HU
    # 40 HU through -600/1500, 50/350 and 400/1800: 1390/1500, 165/350 and 540/1800 of 255.
    assert (red, green, blue) == (236, 120, 77)
    # The network's input is the composite, channel by channel.
    assert not torch.equal(state.pixel_values[0], state.pixel_values[2])
    # The caller's window still wins.
    assert echo.set_image(path, window="abdomen").image.meta.window == (40.0, 400.0)
    echo.model.config.ct_window = None
    assert echo.set_image(path).image.meta.window == (40.0, 400.0)  # the header's


def test_nifti_slice_choice(echo, tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.random.default_rng(0).random((20, 24, 10)).astype(np.float32)
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    state = echo.set_image(path, axis="axial", index=3)
    # Axial display slice of an RAS volume: rows = y (anterior at the top), columns = x.
    assert state.size == (24, 20) and state.image.meta.index == 3
    coronal = echo.predict("Where?", image=echo.prepare(path, _options(axis="coronal", index=5)))
    assert coronal.mask.shape == (10, 20)
    assert echo.predict("Where is it?").mask.shape == (24, 20)


def _options(**kwargs):
    from medisee.inference.inputs import ReadOptions

    return ReadOptions(**kwargs)


def test_follow_up_reuses_the_cached_embedding(echo, monkeypatch):
    encoded = []
    original = echo.model.embed_images
    monkeypatch.setattr(
        echo.model, "embed_images", lambda pixels: encoded.append(len(pixels)) or original(pixels)
    )
    echo.set_image(sample_image(40, 50))
    chat = echo.conversation()
    chat.ask("Which organ filters the blood?")
    chat.ask("And what is below it?")
    echo.predict("Third question?")
    assert encoded == [1]


def test_history_is_re_encoded_with_the_raw_reply_including_candidate_tokens(monkeypatch):
    from tests.inference.helpers import echo_predictor

    calls: list[list[int]] = []
    predictor = echo_predictor(monkeypatch, calls=calls)
    model = predictor.model
    state = predictor.set_image(sample_image(32, 40))
    chat = predictor.conversation(state)
    first = chat.ask("Which organ filters the blood?")
    second = chat.ask("What is next to it?")
    assert chat.history == [
        ("Which organ filters the blood?", first.raw_text),
        ("What is next to it?", second.raw_text),
    ]
    expected = model.prompt_builder().encode(
        [("Which organ filters the blood?", first.raw_text), ("What is next to it?", None)]
    )
    assert calls[1] == expected.input_ids
    # The model saw its own candidate tokens of turn 1 in the turn-2 prompt...
    for token_id in model.candidate_token_ids:
        assert calls[1].count(token_id) == 1
    # ... and turn 2's target was read from its own (the last) candidate group.
    assert second.found_target and second.text.startswith("Echo: What is next to it?")
    chat.reset()
    assert chat.history == [] and chat.state is state


def test_raw_text_drops_a_partial_candidate_group_and_other_specials(predictor):
    model = predictor.model
    tok = model.tokenizer
    cand0 = model.candidate_token_ids[0]
    image_id = model.language.image_token_id
    words = tok("It is here", add_special_tokens=False).input_ids
    partial = GeneratedAnswer(text="It is here", token_ids=[*words, cand0, image_id])
    assert predictor._raw_text(partial) == "It is here"
    # Re-encoding it as history works (no stray candidate or image tokens).
    predictor.set_image(sample_image(20, 20))
    predictor.predict("Next?", history=[("Where?", predictor._raw_text(partial))], max_new_tokens=2)


def test_predict_batch_equals_one_by_one_and_encodes_each_image_once(predictor, monkeypatch):
    images = [sample_image(30, 50, seed=1), sample_image(64, 40, seed=2)]
    items = [(images[0], "Which organ?"), (images[0], "Where is it?"), (images[1], "What?")]
    encoded = []
    original = predictor.model.embed_images
    monkeypatch.setattr(
        predictor.model,
        "embed_images",
        lambda pixels: encoded.append(len(pixels)) or original(pixels),
    )
    batch = predictor.predict_batch(items, max_new_tokens=5)
    assert sum(encoded) == 2  # two distinct images for three questions
    single = [
        predictor.predict(question, image=image, max_new_tokens=5) for image, question in items
    ]
    assert [p.raw_text for p in batch] == [p.raw_text for p in single]
    assert [p.mask.shape for p in batch] == [(30, 50), (30, 50), (64, 40)]


def test_sampling_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(predictor):
    predictor.set_image(sample_image(32, 32))
    before = torch.get_rng_state()
    kwargs = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.5}
    a = predictor.predict("Which organ?", seed=7, **kwargs)
    b = predictor.predict("Which organ?", seed=7, **kwargs)
    others = {predictor.predict("Which organ?", seed=s, **kwargs).raw_text for s in range(4)}
    assert a.raw_text == b.raw_text and a.scores == b.scores
    assert len(others) > 1
    assert torch.equal(torch.get_rng_state(), before)


def test_no_target_gives_an_empty_mask_and_no_box(predictor, monkeypatch):
    tok = predictor.model.tokenizer
    reply = tok(" Nothing to segment here.", add_special_tokens=False).input_ids
    fake = torch.tensor([reply + [tok.eos_token_id]])
    monkeypatch.setattr(predictor.model.language, "generate", lambda *a, **k: fake)
    prediction = predictor.predict("Where is the tumour?", image=sample_image(20, 30))
    assert not prediction.found_target and prediction.box is None
    assert prediction.mask.shape == (20, 30) and not prediction.mask.any()
    assert prediction.scores["iou"] is None and prediction.box_json()["box_xyxy"] is None
    assert prediction.overlay().shape[2] == 3


def test_array_inputs_any_dtype():
    from medisee.inference.inputs import array_to_image

    ct = np.linspace(-1000, 1000, 20 * 30, dtype=np.float32).reshape(20, 30)
    image = array_to_image(ct)
    assert image.pixels.shape == (20, 30, 3) and image.values is not None
    assert image.pixels[0, 0, 0] == 0 and image.pixels[-1, -1, 0] == 255
    rgba = np.zeros((5, 6, 4), dtype=np.uint8)
    assert array_to_image(rgba).pixels.shape == (5, 6, 3)
    assert array_to_image(np.ones((4, 4), dtype=bool)).pixels.max() == 255
    with pytest.raises(ValueError, match="H x W"):
        array_to_image(np.zeros((2, 3, 4, 5)))


def test_long_history_drops_the_oldest_turns(predictor):
    predictor.set_image(sample_image(20, 20))
    limit = predictor._context_limit()
    history = [(f"Question number {i} about the image?", "An answer. " * 8) for i in range(40)]
    ids = predictor.prompt_ids("Last question?", history, max_new_tokens=16)
    assert len(ids) + 16 <= limit
    text = predictor.model.tokenizer.decode(ids)
    assert "Question number 39" in text and "Question number 0 " not in text
    with pytest.raises(ValueError, match="too long"):
        predictor.prompt_ids("why " * 400, (), max_new_tokens=16)
    with pytest.raises(ValueError, match="empty"):
        predictor.predict("   ")


def test_predict_needs_an_image(predictor):
    with pytest.raises(ValueError, match="set_image"):
        predictor.predict("Where?")


def test_first_questions_and_region_requests_name_a_trained_label(predictor, monkeypatch):
    from medisee.inference.predictor import GenerationOptions
    from medisee.model.answer_constraint import ANSWER_FORMS

    model = predictor.model
    model.config.labels = ("liver", "left kidney")
    flags = []
    generate = model.generate

    def spy(*args, **kwargs):
        flags.append(list(kwargs["constrain_answer"]))
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    predictor.set_image(sample_image(40, 50))
    chat = predictor.conversation(knowledge=False)
    first = chat.ask("Which organ filters the blood?")
    openings = {f.format(label=label) for f in ANSWER_FORMS for label in model.config.labels}
    assert first.found_target and first.raw_text.split(" <cand_0>")[0] in openings
    chat.ask("And what is below it?")
    # A follow-up that asks for a region names a trained label too.
    region = chat.ask("Now segment the liver.")
    assert region.found_target and region.raw_text.split(" <cand_0>")[0] in openings
    assert flags == [[True], [False], [True]]
    free = Predictor(model, GenerationOptions(constrain_answer=False))
    free.predict("Which organ filters the blood?", image=sample_image(40, 50))
    assert flags[-1] == [False]


def test_a_reply_cut_by_the_token_limit_shows_whole_sentences(predictor, monkeypatch):
    tok = predictor.model.tokenizer
    reply = tok(" It is the brain. It fills the skull,", add_special_tokens=False).input_ids
    monkeypatch.setattr(predictor.model.language, "generate", lambda *a, **k: torch.tensor([reply]))
    prediction = predictor.predict("Which organ thinks?", image=sample_image(20, 30))
    assert prediction.text == "It is the brain."
    assert prediction.raw_text.endswith("It fills the skull,")  # the history keeps it all


def test_a_question_for_a_structure_the_model_never_learnt_says_so(predictor):
    predictor.model.config.labels = ("liver", "left kidney")
    prediction = predictor.predict("Where is the spleen?", image=sample_image(40, 50))
    assert prediction.text == (
        "I was not trained to find the spleen, so I cannot segment it. "
        "Here I can find the left kidney and the liver."
    )
    assert prediction.scores["absent"] == {"label": "spleen", "reason": "not_trained"}
    assert not prediction.found_target and not prediction.mask.any()
    # The reply is the conversation's history as it stands: no candidate tokens in it.
    assert prediction.raw_text == prediction.text
    named = predictor.predict("Where is the liver?", image=sample_image(40, 50))
    assert named.scores["absent"] is None and named.found_target


def test_an_explanation_about_another_structure_is_replaced_by_the_answers(predictor, monkeypatch):
    from medisee.data.ontology import Ontology

    carotid = Ontology.load().categories["common carotid artery"]
    tok = predictor.model.tokenizer
    answer = tok(" It is the left kidney.", add_special_tokens=False).input_ids
    spliced = tok(f" The left kidney {carotid.function}.", add_special_tokens=False).input_ids
    reply = answer + list(predictor.model.candidate_token_ids) + spliced + [tok.eos_token_id]
    monkeypatch.setattr(predictor.model.language, "generate", lambda *a, **k: torch.tensor([reply]))
    prediction = predictor.predict("Which organ filters the blood?", image=sample_image(20, 30))
    assert prediction.found_target and prediction.scores["explanation"] == "ontology"
    assert prediction.scores["position_from_mask"] is False  # no position said
    assert prediction.text.startswith("It is the left kidney. The left kidney filters the blood")
    assert carotid.function not in prediction.text
    assert carotid.function in prediction.raw_text  # the history keeps the LM's own words


def test_the_position_an_explanation_gives_is_the_masks(predictor, monkeypatch):
    from medisee.inference import predictor as predictor_module

    mask = np.zeros((40, 60), dtype=bool)
    mask[28:38, 2:12] = True  # the lower left third of the image
    monkeypatch.setattr(
        predictor_module,
        "to_original_frame",
        lambda frame, logits, box: (mask, (2.0, 28.0, 12.0, 38.0), (0.12, 0.82, 0.17, 0.25)),
    )
    tok = predictor.model.tokenizer
    candidates = list(predictor.model.candidate_token_ids)
    for said, moved in (("upper right", True), ("lower left", False)):
        answer = tok(" Sure, this is the liver.", add_special_tokens=False).input_ids
        where = tok(f" The liver lies in the {said} part of the image.", add_special_tokens=False)
        reply = answer + candidates + where.input_ids + [tok.eos_token_id]
        monkeypatch.setattr(
            predictor.model.language, "generate", lambda *a, r=reply, **k: torch.tensor([r])
        )
        prediction = predictor.predict("Where is the liver?", image=sample_image(40, 60))
        assert prediction.text.endswith("The liver lies in the lower left part of the image.")
        assert prediction.scores["position_from_mask"] is moved
        assert said in prediction.raw_text  # the history keeps the LM's words


def test_a_paired_structure_asked_in_the_plural_is_answered_with_both_sides(predictor, monkeypatch):
    from medisee.inference import predictor as predictor_module

    predictor.model.config.labels = ("liver", "left kidney", "right kidney")
    # The rows in order: the question as asked, then the left and the right side's.
    masks = [np.zeros((40, 60), dtype=bool) for _ in range(3)]
    masks[1][10:20, 40:50] = True  # the left kidney, on the image's right
    masks[2][12:22, 5:15] = True
    boxes = [(0.0, 0.0, 60.0, 40.0), (40.0, 10.0, 50.0, 20.0), (5.0, 12.0, 15.0, 22.0)]
    calls = iter(range(3))

    def frame(_frame, logits, box):
        if logits is None:
            return np.zeros((40, 60), dtype=bool), None, None
        i = next(calls)
        x0, y0, x1, y1 = boxes[i]
        return masks[i], boxes[i], ((x0 + x1) / 120, (y0 + y1) / 80, (x1 - x0) / 60, (y1 - y0) / 40)

    monkeypatch.setattr(predictor_module, "to_original_frame", frame)
    prediction = predictor.predict("Where are the kidneys?", image=sample_image(40, 60))
    assert prediction.question == "Where are the kidneys?"
    assert prediction.text.startswith("Sure, these are the kidneys.")
    assert np.array_equal(prediction.mask, masks[1] | masks[2])
    assert prediction.box == (5.0, 10.0, 50.0, 22.0)
    assert prediction.box_normalized == pytest.approx((27.5 / 60, 16 / 40, 45 / 60, 12 / 40))
    assert prediction.scores["mask_pixels"] == 200 and len(prediction.scores["sides"]) == 2
    assert prediction.raw_text == prediction.text  # no candidate tokens of its own
    # A singular, or a structure that is not paired, is asked once.
    calls = iter(range(3))
    single = predictor.predict("Where is the kidney?", image=sample_image(40, 60))
    assert "sides" not in single.scores and np.array_equal(single.mask, masks[0])


def test_a_question_whether_a_structure_is_there_says_the_model_cannot_tell(predictor, monkeypatch):
    tok = predictor.model.tokenizer
    answer = tok(" Sure, this is the liver.", add_special_tokens=False).input_ids
    reply = answer + list(predictor.model.candidate_token_ids) + [tok.eos_token_id]
    monkeypatch.setattr(predictor.model.language, "generate", lambda *a, **k: torch.tensor([reply]))
    prediction = predictor.predict("Is there a liver here?", image=sample_image(20, 30))
    assert prediction.found_target and prediction.scores["presence_unknown"] == "liver"
    assert prediction.text == (
        "I cannot tell from the image whether there is a liver; the region most like one is "
        "outlined."
    )
    assert prediction.raw_text.startswith("Sure, this is the liver.")  # the history's words

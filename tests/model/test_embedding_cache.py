"""The embedding cache's key: the encoder's configuration and weights, not their origin."""

import dataclasses

import pytest
import torch

from medisee.model.embedding_cache import EmbeddingCache, encoder_fingerprint
from medisee.model.mask_decoder import build_segmenter
from medisee.model.medisee import MediSee


def test_a_reloaded_model_reads_the_cache_its_training_run_wrote(tmp_path, tiny_model):
    """``from_pretrained`` rebuilds the segmenter with ``weights=None`` and loads the same
    tensors: the fingerprint must not change (it did, and evaluation missed the cache)."""
    tiny_model.save_pretrained(tmp_path / "model")
    reloaded = MediSee.from_pretrained(tmp_path / "model")
    assert encoder_fingerprint(reloaded.segmenter) == encoder_fingerprint(tiny_model.segmenter)
    relabelled = dataclasses.replace(tiny_model.segmenter.config, weights="elsewhere.pth")
    tiny_model.segmenter.config = relabelled
    assert encoder_fingerprint(reloaded.segmenter) == encoder_fingerprint(tiny_model.segmenter)


def test_other_encoder_weights_or_sizes_get_another_key(tiny_model):
    base = encoder_fingerprint(tiny_model.segmenter)
    torch.manual_seed(1)
    other = build_segmenter(tiny_model.config.mask)
    assert encoder_fingerprint(other) != base
    larger = build_segmenter(dataclasses.replace(tiny_model.config.mask, image_size=128))
    assert encoder_fingerprint(larger) != base


def test_store_and_load_round_trip_in_fp16(tmp_path, tiny_model):
    image = tmp_path / "a.png"
    image.write_bytes(b"not really a png, only its bytes are hashed")
    cache = EmbeddingCache(tmp_path / "cache", encoder_fingerprint(tiny_model.segmenter))
    assert image not in cache
    embedding = torch.randn(32, 16, 16)
    cache.store(image, embedding)
    assert image in cache
    torch.testing.assert_close(cache.load(image), embedding.half().float())
    assert cache.load(image).dtype == torch.float32
    stored = cache.load(image, dtype=None)
    assert stored.dtype == torch.float16 and torch.equal(stored, embedding.half())


def test_memory_entries_serve_repeat_loads_and_notice_a_changed_file(tmp_path):
    images = [tmp_path / f"{name}.png" for name in "abc"]
    for i, image in enumerate(images):
        image.write_bytes(f"image {i}".encode())
    cache = EmbeddingCache(tmp_path / "cache", "fp", memory_entries=2)
    for i, image in enumerate(images):
        cache.store(image, torch.full((2, 4, 4), float(i)))
    for image in images:
        cache.load(image)
    assert len(cache._memory) == 2  # the least recently used (a) was dropped
    # A memory hit does not touch the disk: remove the entry file and read it again.
    cache.key(images[2]).unlink()
    assert torch.equal(cache.load(images[2]), torch.full((2, 4, 4), 2.0))
    # Rewriting the image (new size and time) misses the memory; its new bytes have no entry.
    images[1].write_bytes(b"a different image, longer")
    with pytest.raises(KeyError, match="no cached embedding"):
        cache.load(images[1])
    assert EmbeddingCache(tmp_path / "cache", "fp").memory_entries == 0


def test_the_fingerprint_does_not_depend_on_the_thread_count(litemedsam_path):
    """The fingerprint names the cache directory: the same weights must give the same one
    whatever computes it (a float sum of the real LiteMedSAM weights did not)."""
    import subprocess
    import sys

    code = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)\n"
        "from medisee.model.embedding_cache import encoder_fingerprint\n"
        "from medisee.model.mask_decoder import build_segmenter\n"
        "from medisee.model.presets import lite\n"
        "print(encoder_fingerprint(build_segmenter(lite().mask)))"
    )
    prints = {
        subprocess.run(
            [sys.executable, "-c", code, str(threads)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for threads in (1, 2)
    }
    assert len(prints) == 1

"""On-disk cache of the frozen segmenter's image embeddings (SPEC §3).

The LiteMedSAM encoder costs ~2 s per image on a CPU, and it is frozen: each image is
embedded once and read back for every epoch, evaluation pass and follow-up question.
Entries are keyed by the image file's bytes and the encoder's fingerprint (so a changed
image or another encoder never reads a stale entry), written atomically, stored as fp16
safetensors (64x64x256 -> 2 MiB per image).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medisee.model.preprocess import SamTransform

# The fields of MaskConfig that change what the image encoder computes. Not ``weights``
# (where the weights came from: a model rebuilt by ``from_pretrained`` says None while
# holding the same tensors, which are hashed below) nor the prompt/decoder settings.
_ENCODER_FIELDS = ("encoder", "image_size", "prompt_dim", "tiny_vit", "vit")


def encoder_fingerprint(segmenter) -> str:
    """Hash of a segmenter's encoder configuration and its image-encoder weights."""
    config = {name: getattr(segmenter.config, name) for name in _ENCODER_FIELDS}
    if config["encoder"] == "tiny_vit":
        config.pop("vit")
    else:
        config.pop("tiny_vit")
    digest = hashlib.sha256(json.dumps(config, default=str, sort_keys=True).encode())
    # Every byte of every weight (~23 MB for LiteMedSAM, ~20 ms): a float sum would depend
    # on the thread count that computed it, and so would the cache's directory.
    for name, tensor in sorted(segmenter.image_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class EmbeddingCache:
    """``load(image_path) -> [C, g, g]`` float32; ``precompute(segmenter, paths)`` fills it.

    ``memory_entries``: also keep up to this many loaded entries in memory (fp16, least
    recently used dropped first; 2 MiB each at 64 x 64 x 256), keyed by path, size and
    modification time. Training reads each image's entry hundreds of times, and hashing
    the file plus decoding the entry cost ~5 ms a sample on this project's CPU.
    """

    def __init__(
        self, directory: str | os.PathLike[str], fingerprint: str, memory_entries: int = 0
    ) -> None:
        if memory_entries < 0:
            raise ValueError(f"memory_entries must be >= 0, got {memory_entries}")
        self.directory = Path(directory) / fingerprint
        self.directory.mkdir(parents=True, exist_ok=True)
        self.memory_entries = memory_entries
        self._memory: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()

    def key(self, image_path: str | os.PathLike[str]) -> Path:
        digest = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()[:32]
        return self.directory / f"{digest}.safetensors"

    def __contains__(self, image_path: object) -> bool:
        return isinstance(image_path, (str, os.PathLike)) and self.key(image_path).is_file()

    def load(
        self, image_path: str | os.PathLike[str], dtype: torch.dtype | None = torch.float32
    ) -> torch.Tensor:
        """``[C, g, g]`` embedding of ``image_path``, converted to ``dtype``.

        ``dtype=None`` gives the stored fp16 tensor itself, which may be the in-memory
        entry: read it, never change it in place. The training collator converts while it
        stacks a batch, which saves a full-size copy per sample.
        """
        from safetensors.torch import load_file

        memo = None
        if self.memory_entries:
            stat = os.stat(image_path)
            memo = (os.fspath(image_path), stat.st_size, stat.st_mtime_ns)
            if memo in self._memory:
                self._memory.move_to_end(memo)
                stored = self._memory[memo]
                return stored if dtype is None else stored.to(dtype)
        path = self.key(image_path)
        if not path.is_file():
            raise KeyError(f"no cached embedding for {image_path}; run precompute first")
        stored = load_file(str(path))["embedding"]
        if memo is not None:
            self._memory[memo] = stored
            if len(self._memory) > self.memory_entries:
                self._memory.popitem(last=False)
        return stored if dtype is None else stored.to(dtype)

    def store(self, image_path: str | os.PathLike[str], embedding: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self.key(image_path)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        save_file(
            {"embedding": embedding.detach().to(torch.float16).cpu().contiguous()}, str(temporary)
        )
        os.replace(temporary, path)

    @torch.no_grad()
    def precompute(
        self,
        segmenter,
        image_paths: Iterable[str | os.PathLike[str]],
        batch_size: int | None = None,
        progress: bool = True,
    ) -> int:
        """Embed the images not yet cached; returns how many were computed.

        ``batch_size`` defaults to 1 on CPU (TinyViT at 256 px on a quiet 2-core machine:
        1.3 s per image one at a time, 1.7 s in batches of 4; docs/environment.md) and 8 on
        an accelerator.
        """
        from medisee.data.io import read_image

        todo = sorted({str(p) for p in image_paths if p not in self})
        transform = SamTransform(segmenter.config.image_size)
        device = next(segmenter.parameters()).device
        if batch_size is None:
            batch_size = 1 if device.type == "cpu" else 8
        bar = tqdm(total=len(todo), desc="embedding images", unit="img", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            pixels = torch.stack([transform.prepare(read_image(p).pixels)[0] for p in chunk]).to(
                device
            )
            embeddings = segmenter.embed_images(pixels)
            for path, embedding in zip(chunk, embeddings):
                self.store(path, embedding)
            bar.update(len(chunk))
        bar.close()
        return len(todo)

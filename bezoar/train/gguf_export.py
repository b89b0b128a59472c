"""A merged llama-family model → one GGUF file (F32 or F16), written with the `gguf` package.

llama.cpp's own converter (`convert_hf_to_gguf.py`) ships only with its source tree, not with any
package installable here, so this is the small part of it that llama-architecture models need:
tensor names via `gguf`'s own name map, the q/k row permutation llama.cpp expects for rotary
embeddings, hyper-parameters, and the BPE tokenizer with its chat template. Other architectures
are refused with a clear message. transformers reads the result back (the export test checks it).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from bezoar.errors import ConfigError

log = logging.getLogger(__name__)

SUPPORTED = ("llama",)
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3


def write_gguf(model, tokenizer, path: Path, dtype: str = "f32") -> Path:
    import gguf

    config = model.config
    if config.model_type not in SUPPORTED:
        raise ConfigError(f"--gguf: {config.model_type} models are not supported (only {', '.join(SUPPORTED)}); "
                          "use llama.cpp's convert_hf_to_gguf.py on the exported directory instead")
    writer = gguf.GGUFWriter(str(path), "llama")
    _hyper_parameters(writer, config, tokenizer)
    _tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output tensor
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConfigError(f"--gguf: no GGUF name for tensor {name}")
        array = tensor.float()
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            array = _permute(array, heads)
        values = array.numpy()
        if dtype == "f16" and values.ndim == 2:
            values = values.astype("float16")
        writer.add_tensor(target, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("wrote %s", path)
    return path


def _permute(weight, heads: int):
    """HF keeps each rotary head's halves apart; llama.cpp interleaves them (as its converter does)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _hyper_parameters(writer, config, tokenizer) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(Path(getattr(config, "_name_or_path", "") or "bezoar").name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(0)  # all F32 (F16 matrices are marked per tensor)


def _tokenizer(writer, tokenizer) -> None:
    """The byte-level BPE vocabulary and merges from tokenizer.json, plus special ids and template."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ConfigError(f"--gguf: {spec['model']['type']} tokenizers are not supported (byte-level BPE only)")
    vocab = spec["model"]["vocab"]
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if "smollm" in str(tokenizer.name_or_path).lower() else "default")
    writer.add_token_list(tokens)
    writer.add_token_types([_TOKEN_CONTROL if t in special else _TOKEN_NORMAL for t in tokens])
    writer.add_token_merges(merges)
    for name in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

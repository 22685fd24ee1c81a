#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of fuzz-safetensors and fuzz-config (tests/model/corpus/). Run from anywhere;
re-running rewrites the same files."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def safetensors(tensors, pad=True, extra_header=None):
    """tensors: list of (name, dtype, shape, bytes), in reference-writer order."""
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    if extra_header:
        header.update(extra_header)
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


P = "model.language_model."
good = [
    (P + "embed_tokens.weight", "BF16", [4, 2], bytes(range(16))),
    (P + "layers.0.router.scale", "F32", [2], struct.pack("<2f", 1.0, 0.5)),
    (P + "layers.0.layer_scalar", "BF16", [], b"\x80\x3f"),
    (P + "layers.0.mlp.up_proj.weight_scale", "F16", [3, 1], b"\x00\x3c" * 3),
    (P + "layers.0.mlp.up_proj.weight", "F8_E4M3", [3, 2], bytes([0x38, 0xb8, 0x7e, 0xfe, 0x01, 0x00])),
    (P + "empty", "BF16", [0, 5], b""),
]
write("fuzz-safetensors", "good", safetensors(good))
write("fuzz-safetensors", "good-unpadded", safetensors(good, pad=False))
write("fuzz-safetensors", "fused-experts",
      safetensors([(P + "layers.0.experts.gate_up_proj", "BF16", [2, 4, 2], bytes(32)),
                   (P + "layers.0.experts.down_proj", "BF16", [2, 2, 2], bytes(16))]))
write("fuzz-safetensors", "overlap",
      struct.pack("<Q", 96) + json.dumps({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
                                          "b": {"dtype": "BF16", "shape": [2], "data_offsets": [2, 6]}}
                                         ).encode().ljust(96) + bytes(6))
write("fuzz-safetensors", "bad-dtype", safetensors([("x", "I64", [1], bytes(8))]))
write("fuzz-safetensors", "huge-shape",
      safetensors([("x", "BF16", [2 ** 62, 4], b"")]))
write("fuzz-safetensors", "truncated", safetensors(good)[:-5])
write("fuzz-safetensors", "short", b"\x10\x00\x00")

cfg_text = {
    "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 16, "global_head_dim": 32, "num_global_key_value_heads": 1,
    "intermediate_size": 48, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
    "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"], "attention_k_eq_v": True,
    "final_logit_softcapping": 30.0, "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
    "moe_intermediate_size": 16, "hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0,
    "use_double_wide_mlp": False, "model_type": "gemma4_text",
    "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                           "rope_theta": 1000000.0}},
}
quant = {
    "config_groups": {"group_0": {
        "format": "float-quantized", "output_activations": None, "targets": ["Linear"],
        "input_activations": {"actorder": None, "block_structure": None, "dynamic": True, "group_size": None,
                              "num_bits": 8, "observer": None, "strategy": "token", "symmetric": True,
                              "type": "float"},
        "weights": {"actorder": None, "block_structure": None, "dynamic": False, "group_size": None,
                    "num_bits": 8, "observer": "memoryless_minmax", "strategy": "channel", "symmetric": True,
                    "type": "float"}}},
    "format": "float-quantized", "ignore": ["lm_head", P + "layers.0.router.proj"], "kv_cache_scheme": None,
    "quant_method": "compressed-tensors", "quantization_status": "compressed", "sparsity_config": {},
    "transform_config": {},
}
nested = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "eos_token_id": [1, 6, 5],
          "tie_word_embeddings": True, "text_config": cfg_text, "quantization_config": quant}
write("fuzz-config", "nested-fp8.json", json.dumps(nested, indent=2, sort_keys=True))
flat = dict(cfg_text, architectures=["Gemma4ForCausalLM"], eos_token_id=1)
write("fuzz-config", "flat.json", json.dumps(flat, indent=2, sort_keys=True))
plc = dict(cfg_text, per_layer_config={"1": {"head_dim": 32, "num_key_value_heads": 1}})
del plc["global_head_dim"]
write("fuzz-config", "per-layer-config.json", json.dumps(plc))
write("fuzz-config", "minimal.json", json.dumps({k: cfg_text[k] for k in (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "hidden_size_per_layer_input")}))
write("fuzz-config", "bad-quant.json", json.dumps(dict(nested, quantization_config=dict(quant, quant_method="awq"))))
write("fuzz-config", "not-json", "{\"text_config\": [")

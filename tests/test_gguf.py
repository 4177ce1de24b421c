"""GGUF: files written by the ``gguf`` package's writer (llama.cpp's own Python library) read
back exactly; every supported tensor type dequantizes to a float64 reference of its block
format (written here from the format's definition, one block at a time); a Llama read from
GGUF equals the same weights read from safetensors; its byte-level BPE tokenizer equals the
original; truncated, fuzzed and hostile files give TfmError."""

import struct

import numpy as np
import pytest

from hf_ref import require

gguf = require("gguf", "the GGUF tests (llama.cpp's writer)")

import tfm_rs  # noqa: E402
from tfm_rs.models import Llama  # noqa: E402
from tfm_rs.pretrained import PretrainedFormatError, UnsupportedConfigError  # noqa: E402
from tfm_rs.pretrained.gguf import GGUFFile  # noqa: E402

Q = gguf.GGMLQuantizationType


def reference_dequantize(raw: bytes, kind: str, count: int) -> np.ndarray:
    """float64 values from the block definitions, block by block, value by value."""
    out = np.zeros(count, np.float64)
    if kind in ("F32", "F16", "BF16"):
        for i in range(count):
            if kind == "F32":
                out[i] = struct.unpack_from("<f", raw, 4 * i)[0]
            elif kind == "F16":
                out[i] = struct.unpack_from("<e", raw, 2 * i)[0]
            else:
                out[i] = struct.unpack("<f", b"\0\0" + raw[2 * i:2 * i + 2])[0]
        return out
    size = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[kind]
    for b in range(count // 32):
        blk = raw[b * size:(b + 1) * size]
        d = struct.unpack_from("<e", blk, 0)[0]
        for j in range(32):
            if kind == "Q8_0":
                v = d * struct.unpack_from("<b", blk, 2 + j)[0]
            else:
                byte = blk[size - 16 + (j % 16)]
                nib = byte & 0x0F if j < 16 else byte >> 4
                v = d * (nib - 8) if kind == "Q4_0" else d * nib + struct.unpack_from("<e", blk, 2)[0]
            out[b * 32 + j] = v
    return out


def write(path, tensors, meta=None, arch="llama"):
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (meta or {}).items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    for name, (array, qtype) in tensors.items():
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, array.astype(np.float32 if qtype == Q.F32 else np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_every_type_dequantizes_to_the_block_format(tmp_path, qtype):
    rng = np.random.default_rng(int(qtype))
    arrays = {"a": rng.standard_normal((3, 64)).astype(np.float32) * 3,
              "b": rng.standard_normal((1, 32)).astype(np.float32) + 1.5,   # Q4_1's offset matters
              "c": rng.standard_normal((2, 5, 96)).astype(np.float32) * 1e-3}
    write(tmp_path / "t.gguf", {k: (v, qtype) for k, v in arrays.items()})
    f = GGUFFile(tmp_path / "t.gguf")
    raw_file = (tmp_path / "t.gguf").read_bytes()
    for name, array in arrays.items():
        t = f.tensors[name]
        assert t.shape == array.shape and t.type_name == qtype.name
        got = f.get(name)
        assert got.dtype == np.float32
        ref = reference_dequantize(raw_file[t.offset:t.offset + t.nbytes], qtype.name, array.size)
        np.testing.assert_array_equal(got.ravel(), ref.astype(np.float32))
        np.testing.assert_array_equal(got, gguf.quants.dequantize(
            np.frombuffer(raw_file, np.uint8, t.nbytes, t.offset), qtype).reshape(array.shape).astype(np.float32))
        # and the quantization itself is what the type promises
        tol = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q8_0: 1 / 127, Q.Q4_0: 1 / 7, Q.Q4_1: 1 / 15}[qtype]
        scale = np.abs(array).reshape(-1, 32).max(axis=1, keepdims=True)
        assert np.all(np.abs(got - array).reshape(-1, 32) <= tol * scale + 1e-12)


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the cat sat on the mat", "a dog ran far away", "the sun, the moon; naïve café ☕"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel
                                                      .alphabet(), show_progress=False))
    return tok


def _permute(w, heads):  # what llama.cpp's convert_hf_to_gguf.py does to q and k
    out, inp = w.shape
    return w.reshape(heads, 2, out // heads // 2, inp).swapaxes(1, 2).reshape(out, inp)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_from_gguf_equals_llama_from_safetensors(tmp_path, tied):
    tok = _byte_level_tokenizer()
    vocab = tok.get_vocab_size()
    tfm_rs.manual_seed(5)
    model = Llama(vocab, 64, 4, 2, 96, num_kv_heads=2, max_len=48, rope_theta=5000.0, rms_norm_eps=1e-5,
                  tie_weights=tied, bos_id=1, eos_id=2)
    rng = np.random.default_rng(5)
    for p in model.parameters():  # norms away from 1, so that a mix-up would show
        p.copy_(p.numpy() + rng.standard_normal(p.shape).astype(np.float32) * 0.02)
    model.tokenizer = tok
    model.save_pretrained(tmp_path / "hf")
    state = model.state_dict()
    tensors = {"token_embd.weight": state["embed_tokens.weight"], "output_norm.weight": state["norm.weight"]}
    if not tied:
        tensors["output.weight"] = state["lm_head.weight"]
    inverse = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
    for i in range(2):
        for ours, theirs in inverse.items():
            w = np.asarray(state[f"layers.{i}.{ours}.weight"])
            w = _permute(w, 4) if theirs == "attn_q" else _permute(w, 2) if theirs == "attn_k" else w
            tensors[f"blk.{i}.{theirs}.weight"] = w
    vocab_list = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    import json
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m
              for m in json.loads(tok.to_str())["model"]["merges"]]
    meta = {"llama.context_length": 48, "llama.embedding_length": 64, "llama.block_count": 2,
            "llama.feed_forward_length": 96, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
            "llama.rope.freq_base": 5000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": vocab_list, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    write(tmp_path / "m.gguf", {k: (np.asarray(v, np.float32), Q.F32) for k, v in tensors.items()}, meta)
    a, b = Llama.from_pretrained(tmp_path / "m.gguf"), Llama.from_pretrained(tmp_path / "hf")
    assert a.config == b.config
    ids = rng.integers(0, vocab, (2, 30))
    np.testing.assert_array_equal(a(ids).numpy(), b(ids).numpy())
    text = "the cat sat, naïve café ☕ moon"
    assert a.tokenizer.encode(text).ids == tok.encode(text).ids
    assert a.tokenizer.decode(a.tokenizer.encode(text).ids) == text


def test_truncated_fuzzed_and_hostile_files(tmp_path):
    rng = np.random.default_rng(9)
    write(tmp_path / "ok.gguf", {"w": (rng.standard_normal((2, 64)).astype(np.float32), Q.Q8_0)},
          {"general.name": "x", "some.list": [1, 2, 3]})
    blob = (tmp_path / "ok.gguf").read_bytes()
    t = GGUFFile(tmp_path / "ok.gguf").tensors["w"]
    end = t.offset + t.nbytes  # the writer pads the file after the last tensor
    p = tmp_path / "bad.gguf"
    for cut in list(range(0, 300)) + list(range(300, end, 5)):
        p.write_bytes(blob[:cut])
        with pytest.raises(tfm_rs.TfmError):
            GGUFFile(p).get("w")
    for _ in range(300):
        b = bytearray(blob)
        for i in rng.integers(0, 200, size=2):
            b[i] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            GGUFFile(p).get("w")
        except tfm_rs.TfmError:
            pass
    huge = blob[:8] + struct.pack("<QQ", 1, 2 ** 40) + blob[24:]
    p.write_bytes(huge)
    with pytest.raises(PretrainedFormatError, match="more than"):
        GGUFFile(p)
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2 ** 50) + b"key")
    with pytest.raises(PretrainedFormatError, match="truncated"):
        GGUFFile(p)
    p.write_bytes(b"GGML" + blob[4:])
    with pytest.raises(PretrainedFormatError, match="magic"):
        GGUFFile(p)


def test_unsupported_types_and_metadata_are_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    w.add_tensor("w", np.zeros((1, 144), np.uint8), raw_dtype=Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedConfigError, match="Q4_K"):
        GGUFFile(tmp_path / "k.gguf")
    write(tmp_path / "g.gguf", {"w": (np.zeros((1, 32), np.float32), Q.F32)}, {}, arch="gpt2")
    with pytest.raises(UnsupportedConfigError, match="architecture='gpt2'"):
        Llama.from_pretrained(tmp_path / "g.gguf")

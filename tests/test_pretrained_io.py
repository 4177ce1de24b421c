"""The safetensors reader and Hugging Face directory handling: round trips, and every kind of
bad file — truncated, fuzzed, hostile headers, pickles, broken JSON — gives a TfmError naming
the problem, never a crash or a huge allocation."""

import json
import struct

import numpy as np
import pytest

import tfm_rs
from tfm_rs.pretrained import (
    PretrainedFormatError,
    UnsupportedConfigError,
    WeightsMismatchError,
    read_safetensors,
    write_safetensors,
)
from tfm_rs.models import BertEncoder, GPT


def _arrays(rng):
    return {"a.weight": rng.standard_normal((3, 17)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
            "half": rng.standard_normal((1, 3)).astype(np.float16), "empty": np.zeros((0, 4), np.float32)}


def test_round_trip_and_reference_reader(tmp_path):
    rng = np.random.default_rng(0)
    arrays = _arrays(rng)
    write_safetensors(tmp_path / "x.safetensors", arrays)
    got = read_safetensors(tmp_path / "x.safetensors")
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v.astype(np.float32) if v.dtype == np.float16 else v)
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is a runtime dependency")
    ref = safetensors_numpy.load_file(str(tmp_path / "x.safetensors"))
    for k, v in arrays.items():
        np.testing.assert_array_equal(ref[k], v)


def test_bf16_is_widened_exactly(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(read_safetensors(tmp_path / "b.safetensors")["x"], want)


def _file(tmp_path, header_obj, data=b"", raw_header=None):
    raw = raw_header if raw_header is not None else json.dumps(header_obj).encode()
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return p


@pytest.mark.parametrize("header, data, match", [
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
    ({"x": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unsupported dtype"),
    ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "data_offsets"),
    ({"x": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 8]}}, b"\0" * 8, "needs"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "overlap"),
    ([1, 2], b"", "not a JSON object"),
    ({"x": 3}, b"", "not an object"),
])
def test_bad_headers_are_named(tmp_path, header, data, match):
    with pytest.raises(PretrainedFormatError, match=match):
        read_safetensors(_file(tmp_path, header, data))


def test_header_claiming_terabytes_is_refused_before_reading(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 2 ** 42) + b"{}")
    with pytest.raises(PretrainedFormatError, match="claims"):
        read_safetensors(p)
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")  # within the limit, past the end of the file
    with pytest.raises(PretrainedFormatError, match="truncated"):
        read_safetensors(p)
    p.write_bytes(b"\x01\x02")
    with pytest.raises(PretrainedFormatError, match="too short"):
        read_safetensors(p)
    with pytest.raises(PretrainedFormatError, match="JSON"):
        read_safetensors(_file(tmp_path, None, raw_header=b"\xff\xfe{"))


def test_every_truncation_and_random_byte_flips_give_tfm_errors(tmp_path):
    rng = np.random.default_rng(1)
    write_safetensors(tmp_path / "ok.safetensors", _arrays(rng))
    blob = (tmp_path / "ok.safetensors").read_bytes()
    p = tmp_path / "bad.safetensors"
    for cut in list(range(0, 200)) + list(range(200, len(blob), 7)):
        p.write_bytes(blob[:cut])
        with pytest.raises(tfm_rs.TfmError):
            read_safetensors(p)
    header_end = 8 + int.from_bytes(blob[:8], "little")
    for _ in range(300):
        b = bytearray(blob)
        for i in rng.integers(0, header_end, size=3):
            b[i] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            read_safetensors(p)  # a flip inside a number or name can leave a valid file
        except tfm_rs.TfmError:
            pass


def test_pickle_checkpoints_are_refused_with_a_conversion_hint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(PretrainedFormatError, match="never unpickles.*safetensors"):
        BertEncoder.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(PretrainedFormatError, match="no model.safetensors"):
        GPT.from_pretrained(tmp_path)


def _tiny_bert_dir(tmp_path, **changes):
    config = dict(model_type="bert", vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=12, max_position_embeddings=16, type_vocab_size=2)
    config.update(changes)
    model = BertEncoder(30, 8, 2, 1, 12, max_len=16)
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("change, match", [
    (dict(hidden_act="swish"), "hidden_act='swish' is not supported"),
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(hidden_size="8"), "hidden_size='8' should be of type int"),
    (dict(model_type="roberta"), "model_type"),
])
def test_unsupported_configs_are_named_before_reading_tensors(tmp_path, change, match):
    with pytest.raises(UnsupportedConfigError, match=match):
        BertEncoder.from_pretrained(_tiny_bert_dir(tmp_path, **change))


def test_broken_config_json(tmp_path):
    _tiny_bert_dir(tmp_path)
    for text in ("{", "[]", "\xff"):
        (tmp_path / "config.json").write_text(text, encoding="latin-1")
        with pytest.raises(PretrainedFormatError):
            BertEncoder.from_pretrained(tmp_path)


def test_missing_extra_and_misshapen_tensors_are_listed_together(tmp_path):
    _tiny_bert_dir(tmp_path)
    st = read_safetensors(tmp_path / "model.safetensors")
    del st["bert.encoder.layer.0.attention.self.key.bias"]
    st["bert.encoder.layer.0.attention.output.dense.weight"] = np.zeros((8, 9), np.float32)
    st["bert.encoder.layer.7.output.dense.weight"] = np.zeros((8, 12), np.float32)
    write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(WeightsMismatchError) as e:
        BertEncoder.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing: bert.encoder.layer.0.attention.self.key.bias" in msg
    assert "unexpected: bert.encoder.layer.7.output.dense.weight" in msg
    assert "bert.encoder.layer.0.attention.output.dense.weight: shape (8, 9) in the checkpoint, (8, 8) expected" in msg
    st["bert.encoder.layer.0.output.dense.weight"] = np.zeros((8, 13), np.float32)  # one config.json sizes
    write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(WeightsMismatchError, match=r"config.json does not describe these weights: bert.encoder.layer"
                                                   r".0.output.dense.weight: \(8, 13\) in the checkpoint, \(8, 12\)"):
        BertEncoder.from_pretrained(tmp_path)


def test_sharded_checkpoint_and_hostile_index(tmp_path):
    src = tmp_path / "one"
    model = GPT(40, 8, 2, 2, max_len=12, dropout=0.0)
    model.save_pretrained(src)
    st = read_safetensors(src / "model.safetensors")
    names = sorted(st)
    shards = tmp_path / "sharded"
    shards.mkdir()
    (shards / "config.json").write_text((src / "config.json").read_text())
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        write_safetensors(shards / f"model-{i}.safetensors", {n: st[n] for n in part})
        weight_map.update({n: f"model-{i}.safetensors" for n in part})
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = GPT.from_pretrained(shards)
    ids = np.arange(10)[None] % 40
    np.testing.assert_array_equal(loaded(ids).numpy(), GPT.from_pretrained(src)(ids).numpy())
    weight_map[names[0]] = "../../etc/passwd"
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(PretrainedFormatError, match="not a .safetensors file in the checkpoint directory"):
        GPT.from_pretrained(shards)


@pytest.mark.parametrize("key, value", [("hidden_size", 10 ** 9), ("num_hidden_layers", 10 ** 7),
                                        ("vocab_size", 10 ** 10), ("max_position_embeddings", 10 ** 9),
                                        ("intermediate_size", 7), ("num_attention_heads", 3)])
def test_configs_that_disagree_with_the_weights_allocate_nothing(tmp_path, key, value):
    _tiny_bert_dir(tmp_path, **{key: value})
    with pytest.raises(tfm_rs.TfmError, match="config|multiple"):
        BertEncoder.from_pretrained(tmp_path)


def test_fuzzed_configs_give_tfm_errors(tmp_path):
    _tiny_bert_dir(tmp_path)
    base = json.loads((tmp_path / "config.json").read_text())
    rng = np.random.default_rng(2)
    values = [None, -1, 0, 1.5, "x", [], {}, True, 2 ** 70, 10 ** 6]
    for _ in range(60):
        config = dict(base)
        for key in rng.choice(sorted(base), size=2, replace=False):
            config[key] = values[rng.integers(len(values))]
        (tmp_path / "config.json").write_text(json.dumps(config))
        try:
            BertEncoder.from_pretrained(tmp_path)
        except tfm_rs.TfmError:
            pass

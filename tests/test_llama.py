"""The Llama family against Hugging Face ``transformers``' LlamaForCausalLM (small random
configs; float32 on both sides, 1e-4 relative to the largest magnitude): logits on padded
batches for multi-head, grouped-query and multi-query attention, tied and untied heads, rotary
scaling; greedy tokens with the key/value cache; the loss and its gradients; a model trained
here loads in ``transformers``."""

import numpy as np
import pytest

from hf_ref import require

transformers = require("transformers", "the Llama parity tests")
torch = require("torch", "the Llama parity tests")

import tfm_rs  # noqa: E402
from tfm_rs.models import Llama  # noqa: E402
from tfm_rs.optim import Adam  # noqa: E402
from tfm_rs.pretrained import UnsupportedConfigError  # noqa: E402

RTOL = 1e-4


def close(got, ref, rtol=RTOL):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < rtol, f"relative error {err:.2e}"


def hf_llama(tmp_path, seed=0, **kw):
    base = dict(vocab_size=71, hidden_size=48, intermediate_size=61, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, bos_token_id=1, eos_token_id=2,
                pad_token_id=0)
    base.update(kw)
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base)).eval()
    hf.save_pretrained(tmp_path)
    return hf, Llama.from_pretrained(tmp_path)


@pytest.mark.parametrize("kv, tied", [(6, False), (2, True), (1, False)])
def test_logits_and_greedy_tokens_match_transformers(tmp_path, kv, tied):
    hf, model = hf_llama(tmp_path, num_key_value_heads=kv, tie_word_embeddings=tied)
    rng = np.random.default_rng(kv)
    ids = rng.integers(3, 71, (3, 17))
    ids[1, 9:] = 0
    ids[2, 1:] = 0
    mask = ids != 0
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))).logits.numpy()
    close(model(ids).numpy()[mask], ref[mask])
    prompt = ids[0, :7]
    got = model.generate(prompt, max_new_tokens=15).sequences[0]
    with torch.no_grad():
        want = hf.generate(torch.tensor(prompt[None]), max_new_tokens=15, do_sample=False)[0].tolist()
    assert got == want


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
])
def test_rope_scaling_matches_transformers(tmp_path, scaling):
    hf, model = hf_llama(tmp_path, rope_parameters={"rope_theta": 500.0, **scaling}, head_dim=16)
    ids = np.random.default_rng(5).integers(3, 71, (2, 40))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    close(model(ids).numpy(), ref)


def test_unsupported_configs_are_named(tmp_path):
    import json

    hf_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, match in ((dict(hidden_act="gelu"), "hidden_act='gelu'"),
                          (dict(rope_parameters={"rope_type": "yarn", "factor": 2.0}), "'yarn' is not supported"),
                          (dict(num_key_value_heads=4), "not a multiple"),
                          (dict(model_type="gpt2"), "model_type")):
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(UnsupportedConfigError, match=match):
            Llama.from_pretrained(tmp_path)


def test_loss_and_gradients_match_transformers(tmp_path):
    hf, model = hf_llama(tmp_path, pad_token_id=None)
    model.train()
    ids = np.random.default_rng(7).integers(0, 71, (2, 13))
    loss = model.loss(ids)
    loss.backward()
    out = hf(torch.tensor(ids), labels=torch.tensor(ids))
    out.loss.backward()
    assert abs(loss.item() - out.loss.item()) < 1e-5 * abs(out.loss.item())
    layer = model.layers[1]
    ref = hf.model.layers[1]
    for ours, theirs in ((layer.self_attn.q_proj, ref.self_attn.q_proj), (layer.self_attn.k_proj, ref.self_attn.k_proj),
                         (layer.mlp.gate_proj, ref.mlp.gate_proj), (model.embed_tokens, hf.model.embed_tokens)):
        close(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), 1e-4)
    close(model.layers[0].input_layernorm.weight.grad.numpy(), hf.model.layers[0].input_layernorm.weight.grad.numpy())


def test_trained_here_loads_in_transformers(tmp_path):
    tfm_rs.manual_seed(4)
    model = Llama(59, 32, 4, 2, 40, num_kv_heads=2, max_len=32, rope_theta=1000.0, tie_weights=True)
    opt = Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(4)
    first = None
    for _ in range(8):
        opt.zero_grad()
        loss = model.loss(np.tile(rng.integers(0, 59, (4, 6)), (1, 3)))  # a repeating pattern: learnable
        loss.backward()
        opt.step()
        first = first or loss.item()
    assert loss.item() < first
    model.save_pretrained(tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = rng.integers(0, 59, (2, 20))
    with torch.no_grad():
        close(model.eval()(ids).numpy(), hf(torch.tensor(ids)).logits.numpy())
    np.testing.assert_array_equal(Llama.from_pretrained(tmp_path)(ids).numpy(), model(ids).numpy())


def test_sampling_is_seeded_and_stops_at_eos(tmp_path):
    _, model = hf_llama(tmp_path)
    a = model.generate([3, 4, 5], max_new_tokens=12, do_sample=True, top_k=20, top_p=0.9, seed=1).sequences[0]
    b = model.generate([3, 4, 5], max_new_tokens=12, do_sample=True, top_k=20, top_p=0.9, seed=1).sequences[0]
    assert a == b and len(a) <= 15
    greedy = model.generate([3, 4, 5], max_new_tokens=12).sequences[0]
    stop = greedy[4]
    cut = model.generate([3, 4, 5], max_new_tokens=12, eos_token_id=stop).sequences[0]
    assert cut == greedy[:greedy.index(stop, 3) + 1]

"""tfm_rs.nn.utils.prune: masks, state_dict keys and gradients against tprune()
(float64) on the same weights, mask composition, training with masks, checkpoints, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tfm_rs
from tfm_rs import nn
from tfm_rs.checkpoint import load_checkpoint, save_checkpoint
from tfm_rs.nn.utils import prune
from helpers import assert_close, randn
from torch_ref import require_torch


def tprune():
    """torch.nn.utils.prune (a submodule torch does not import by itself)."""
    require_torch()
    import torch.nn.utils.prune as reference
    return reference


def pair(in_f: int = 17, out_f: int = 13, seed: int = 0):
    """A tfm_rs Linear and a float64 torch Linear with the same (tie-free) weights."""
    torch = require_torch()
    ours = nn.Linear(in_f, out_f)
    ours.weight.copy_(randn((out_f, in_f), seed))
    ours.bias.copy_(randn((out_f,), seed + 1))
    theirs = torch.nn.Linear(in_f, out_f).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.numpy().astype(np.float64)))
        theirs.bias.copy_(torch.from_numpy(ours.bias.numpy().astype(np.float64)))
    return ours, theirs, torch


def same_masks(ours, theirs, name: str = "weight") -> None:
    mine = ours.state_dict()[name + "_mask"]
    ref = theirs.state_dict()[name + "_mask"].numpy()
    np.testing.assert_array_equal(mine, ref.astype(np.float32))
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 1.0, 7, 0])
def test_l1_unstructured_matches_torch(amount):
    ours, theirs, torch = pair()
    prune.l1_unstructured(ours, "weight", amount)
    tprune().l1_unstructured(theirs, "weight", amount)
    same_masks(ours, theirs)
    assert list(ours.state_dict()) == ["bias", "weight_orig", "weight_mask"]
    assert isinstance(ours.weight_orig, nn.Parameter) and not isinstance(ours.weight, nn.Parameter)
    assert prune.is_pruned(ours)


def test_round_half_to_even_as_torch():
    # 0.5 · 13 = 6.5 entries: Python's round (as PyTorch) prunes 6; 0.5 · 5 = 2.5 → 2.
    ours, theirs, torch = pair(1, 13)
    prune.l1_unstructured(ours, "weight", 0.5)
    tprune().l1_unstructured(theirs, "weight", 0.5)
    same_masks(ours, theirs)
    assert ours.weight_mask.numpy().sum() == 7


@pytest.mark.parametrize("n,dim,amount", [(2, 0, 0.4), (1, 1, 5), (float("inf"), 0, 3), ("fro", -1, 0.25),
                                          (float("-inf"), 1, 0.5)])
def test_ln_structured_matches_torch(n, dim, amount):
    ours, theirs, torch = pair()
    prune.ln_structured(ours, "weight", amount, n, dim)
    tprune().ln_structured(theirs, "weight", amount, n=n, dim=dim)
    same_masks(ours, theirs)


def test_masks_compose_as_pruning_container():
    ours, theirs, torch = pair()
    steps = [("l1", 0.3), ("ln", 0.25), ("l1", 11), ("ln", 2)]
    for kind, amount in steps:
        for mod, lib in ((ours, prune), (theirs, tprune())):
            if kind == "l1":
                lib.l1_unstructured(mod, "weight", amount)
            else:
                lib.ln_structured(mod, "weight", amount, n=2, dim=0)
        same_masks(ours, theirs)
    hooks = list(ours._forward_pre_hooks.values())
    assert len(hooks) == 1 and isinstance(hooks[0], prune.PruningContainer) and len(hooks[0]) == 4


def test_global_unstructured_matches_torch():
    a, ta, torch = pair(17, 13, seed=3)
    b, tb, _ = pair(9, 31, seed=7)
    prune.l1_unstructured(b, "weight", 0.2)  # composes with an earlier mask
    tprune().l1_unstructured(tb, "weight", 0.2)
    prune.global_unstructured([(a, "weight"), (b, "weight"), (b, "bias")], prune.L1Unstructured, amount=0.6)
    tprune().global_unstructured([(ta, "weight"), (tb, "weight"), (tb, "bias")],
                                             tprune().L1Unstructured, amount=0.6)
    same_masks(a, ta)
    same_masks(b, tb)
    same_masks(b, tb, "bias")


def test_forward_and_gradients_match_torch_and_are_zero_where_masked():
    ours, theirs, torch = pair()
    prune.l1_unstructured(ours, "weight", 0.6)
    tprune().l1_unstructured(theirs, "weight", 0.6)
    x = randn((3, 5, 17), 11)
    up = randn((3, 5, 13), 12)
    y = ours(tfm_rs.Tensor(x))
    (y * tfm_rs.Tensor(up)).sum().backward()
    ty = theirs(torch.from_numpy(x.astype(np.float64)))
    (ty * torch.from_numpy(up.astype(np.float64))).sum().backward()
    assert_close(y.numpy(), ty.detach().numpy(), 1e-5, 2e-6, "forward")
    grad = ours.weight_orig.grad.numpy()
    assert_close(grad, theirs.weight_orig.grad.numpy(), 1e-5, 5e-6, "weight_orig.grad")
    masked = ours.weight_mask.numpy() == 0
    assert masked.sum() == round(0.6 * 13 * 17)
    assert np.all(grad[masked] == 0.0)


def test_training_keeps_pruned_weights_at_zero():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    prune.l1_unstructured(model[0], "weight", 0.5)
    prune.ln_structured(model[2], "weight", 1, n=2, dim=1)
    opt = tfm_rs.optim.Adam(model.parameters(), lr=1e-2)
    x, target = tfm_rs.Tensor(randn((6, 8), 1)), randn((6, 4), 2)
    for _ in range(5):
        opt.zero_grad()
        ((model(x) - tfm_rs.Tensor(target)) ** 2).mean().backward()
        opt.step()
    model(x)  # the pre-hook recomputes weight from the updated weight_orig
    for layer in (model[0], model[2]):
        mask = layer.weight_mask.numpy()
        assert np.all(layer.weight.numpy()[mask == 0] == 0.0)
        assert np.all(layer.weight.numpy()[mask == 1] == layer.weight_orig.numpy()[mask == 1])
    # Adam moves masked entries of weight_orig only through weight decay, which is 0 here.
    assert np.all(model[0].weight_orig.grad.numpy()[model[0].weight_mask.numpy() == 0] == 0.0)


def test_remove_makes_pruning_permanent_as_torch():
    ours, theirs, torch = pair()
    prune.ln_structured(ours, "weight", 0.5, 1, 0)
    tprune().ln_structured(theirs, "weight", 0.5, n=1, dim=0)
    prune.remove(ours, "weight")
    tprune().remove(theirs, "weight")
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["bias", "weight"]  # re-registered last
    assert isinstance(ours.weight, nn.Parameter) and not prune.is_pruned(ours)
    np.testing.assert_array_equal(ours.weight.numpy(), theirs.weight.detach().numpy().astype(np.float32))
    with pytest.raises(ValueError, match="has to be pruned"):
        prune.remove(ours, "weight")


def test_checkpoint_of_a_pruned_model(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    prune.l1_unstructured(model[0], "weight", 0.7)
    prune.ln_structured(model[2], "weight", 0.5, n=2, dim=0)
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), {"kind": "mlp"})
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    for layer in (fresh[0], fresh[2]):
        prune.identity(layer, "weight")  # the pruned structure, whose masks the checkpoint sets
    fresh.load_state_dict(load_checkpoint(tmp_path / "ckpt").model_state)
    x = tfm_rs.Tensor(randn((3, 8), 4))
    np.testing.assert_array_equal(fresh(x).numpy(), model(x).numpy())
    np.testing.assert_array_equal(fresh[0].weight_mask.numpy(), model[0].weight_mask.numpy())


def test_deepcopy_keeps_pruning():
    import copy
    model = nn.Linear(5, 3)
    prune.l1_unstructured(model, "weight", 4)
    clone = copy.deepcopy(model)
    clone.weight_orig.copy_(np.ones((3, 5), np.float32))
    out = clone(tfm_rs.Tensor(np.ones((1, 5), np.float32))).numpy()
    assert_close(out, (clone.weight_mask.numpy().sum(1) + clone.bias.numpy())[None], 1e-6, 1e-6)
    assert model.weight_orig.numpy()[0, 0] != 1.0 or model.weight_orig.numpy()[0, 1] != 1.0


@pytest.mark.parametrize("amount", [-0.1, 1.5, -1, "0.5", None, True])
def test_bad_amount(amount):
    with pytest.raises(tfm_rs.TfmError, match="amount"):
        prune.l1_unstructured(nn.Linear(3, 2), "weight", amount)


def test_bad_input_leaves_the_module_unchanged():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="smaller than the number of parameters"):
        prune.l1_unstructured(layer, "weight", 7)
    with pytest.raises(ValueError, match="no parameter named 'wieght'"):
        prune.l1_unstructured(layer, "wieght", 0.5)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        prune.ln_structured(layer, "bias", 1, 2, 0)
    with pytest.raises(IndexError, match="out of range"):
        prune.ln_structured(layer, "weight", 1, 2, 2)
    with pytest.raises(ValueError, match="unstructured"):
        prune.global_unstructured([(layer, "weight")], prune.LnStructured, amount=1, n=2)
    assert list(layer.state_dict()) == ["weight", "bias"] and not prune.is_pruned(layer)


def test_random_unstructured_prunes_the_count_and_composes():
    layer = nn.Linear(10, 10)
    np.random.seed(0)
    prune.random_unstructured(layer, "weight", 0.3)
    first = layer.weight_mask.numpy().copy()
    assert first.sum() == 70
    prune.random_unstructured(layer, "weight", 10)
    second = layer.weight_mask.numpy()
    assert second.sum() == 60 and np.all(second <= first)


# ---------------------------------------------------------------------------------------- heads and channels

def mha_reference(x, w_in, b_in, w_out, b_out, nhead, zero_heads=()):
    """float64 self-attention with the given heads' outputs zeroed before the output projection."""
    x, w_in, b_in, w_out, b_out = (np.asarray(a, np.float64) for a in (x, w_in, b_in, w_out, b_out))
    n, L, E = x.shape
    Dh = E // nhead
    q, k, v = np.split(x @ w_in.T + b_in, 3, axis=-1)
    split = lambda t: t.reshape(n, L, nhead, Dh).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(Dh)
    p = np.exp(s - s.max(-1, keepdims=True))
    y = (p / p.sum(-1, keepdims=True)) @ v
    y[:, list(zero_heads)] = 0.0
    return y.transpose(0, 2, 1, 3).reshape(n, L, E) @ w_out.T + b_out


def zero_head_columns(attn, heads):
    """Unpruned twin of a head pruning: the heads' columns of out_proj set to zero."""
    w = attn.out_proj.weight.numpy()
    for h in heads:
        w[:, h * attn.head_dim:(h + 1) * attn.head_dim] = 0.0
    attn.out_proj.weight.copy_(w)


@pytest.mark.parametrize("E,nhead,heads,L", [(12, 4, [1, 3], 3), (16, 8, [0, 7, 2], 17), (6, 3, [2], 1)])
def test_prune_heads_equals_zeroing_head_outputs(E, nhead, heads, L):
    import copy
    attn = nn.MultiheadAttention(E, nhead)
    attn.in_proj_bias.copy_(randn((3 * E,), 5))
    attn.out_proj.bias.copy_(randn((E,), 6))
    twin = copy.deepcopy(attn)
    state = {k: v.copy() for k, v in attn.state_dict().items()}
    attn.prune_heads(heads)
    zero_head_columns(twin, heads)
    x = randn((2, L, E), 7)
    up = tfm_rs.Tensor(randn((2, L, E), 8))
    expected = mha_reference(x, state["in_proj_weight"], state["in_proj_bias"], state["out_proj.weight"],
                             state["out_proj.bias"], nhead, heads)
    xs = [tfm_rs.Tensor(x, requires_grad=True) for _ in range(2)]
    outs = [m(t, t, t, need_weights=False)[0] for m, t in ((attn, xs[0]), (twin, xs[1]))]
    assert_close(outs[0].numpy(), expected, 1e-5, 2e-6, "pruned forward vs float64 reference")
    for out in outs:
        (out * up).sum().backward()
    assert_close(xs[0].grad.numpy(), xs[1].grad.numpy(), 1e-5, 1e-6, "input gradients")
    kept = [h for h in range(nhead) if h not in heads]
    cols = np.concatenate([np.arange(h * attn.head_dim, (h + 1) * attn.head_dim) for h in kept])
    rows = np.concatenate([cols + b * E for b in range(3)])
    assert_close(attn.in_proj_weight.grad.numpy(), twin.in_proj_weight.grad.numpy()[rows], 1e-5, 1e-6, "in_proj")
    assert_close(attn.out_proj.weight.grad.numpy(), twin.out_proj.weight.grad.numpy()[:, cols], 1e-5, 1e-6, "out")
    assert attn.num_heads == len(kept) and attn.in_proj_weight.shape == (3 * len(cols), E)


def test_prune_ffn_equals_zeroing_channels():
    import copy
    layer = nn.TransformerEncoderLayer(8, 2, 17, dropout=0.0)
    twin = copy.deepcopy(layer)
    drop = [0, 5, 16]
    layer.prune_ffn(drop)
    w = twin.linear2.weight.numpy()
    w[:, drop] = 0.0
    twin.linear2.weight.copy_(w)
    x = tfm_rs.Tensor(randn((2, 3, 8), 9))
    assert_close(layer(x).numpy(), twin(x).numpy(), 1e-6, 1e-6, "ffn channels")
    assert layer.linear1.weight.shape == (14, 8) and layer.linear2.weight.shape == (8, 14)


def tiny_seq2seq(**kw):
    return tfm_rs.models.Seq2SeqTransformer(23, 23, d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                            dim_feedforward=24, dropout=0.0, max_len=32, **kw)


def test_model_prune_heads_counts_config_checkpoint_and_decoding(tmp_path):
    import copy
    model = tiny_seq2seq()
    model.eval()
    twin = copy.deepcopy(model)
    before = model.num_parameters()
    plan = {"encoder.0": [0, 3], "decoder.1": [2], "decoder.0.cross": [1, 2, 3]}
    model.prune_heads(plan)
    model.prune_ffn({"decoder.0": [1, 4, 9], "encoder.1": [0]})
    E, Dh = 16, 4
    removed_heads = sum(len(h) for h in plan.values())
    assert before - model.num_parameters() == removed_heads * (4 * E * Dh + 3 * Dh) + 4 * (2 * E + 1)
    assert model.config["pruned_heads"] == {"encoder.0": [0, 3], "decoder.1": [2], "decoder.0.cross": [1, 2, 3]}
    assert model.config["ffn_dims"] == {"decoder.0": 21, "encoder.1": 23}
    modules = twin._attention_modules()
    for key, heads in plan.items():
        zero_head_columns(modules[key], heads)
    for key, chans in {"decoder.0": [1, 4, 9], "encoder.1": [0]}.items():
        lin2 = twin._ffn_layers()[key].linear2
        w = lin2.weight.numpy()
        w[:, chans] = 0.0
        lin2.weight.copy_(w)
    src = np.array([[5, 6, 7, 8, 2], [9, 10, 2, 0, 0]])
    tgt = np.array([[1, 11, 12, 13], [1, 14, 15, 0]])
    assert_close(model(src, tgt).numpy(), twin(src, tgt).numpy(), 1e-5, 2e-6, "pruned model vs zeroed twin")
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), model.config)
    loaded = tfm_rs.models.model_from_checkpoint(tmp_path / "ckpt")
    loaded.eval()
    np.testing.assert_array_equal(loaded(src, tgt).numpy(), model(src, tgt).numpy())
    assert loaded._attention_modules()["decoder.0.cross"].num_heads == 1
    for num_beams in (1, 3):
        ours = loaded.generate(src, max_new_tokens=6, num_beams=num_beams).sequences
        ref = twin.generate(src, max_new_tokens=6, num_beams=num_beams).sequences
        # Rows that stop at EOS may be shorter than the others: compare them as lists.
        assert [list(map(int, row)) for row in ours] == [list(map(int, row)) for row in ref], num_beams


def zeroed_twin_and_pruned(model, plan):
    """``model`` pruned by ``plan``, and an unpruned copy with those heads' out_proj columns
    zeroed (what the decoder computed before it took per-layer head counts)."""
    import copy
    twin = copy.deepcopy(model)
    model.prune_heads(plan)
    modules = twin._attention_modules()
    for key, heads in plan.items():
        zero_head_columns(modules[str(key)], heads)
    return model, twin


def same_generations(ours, ref, what):
    # Row by row: sequences that stop at EOS are ragged.
    for field in ("sequences", "scores", "log_probs"):
        a, b = getattr(ours, field), getattr(ref, field)
        assert len(a) == len(b), f"{what}: {field}"
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), f"{what}: {field}")


def test_pruned_seq2seq_decodes_with_its_own_head_counts_exactly_as_the_zeroed_twin():
    # Uneven across layers and between self- and cross-attention; decoder.0 keeps one
    # self-attention head and decoder.2 one cross-attention head.
    tfm_rs.manual_seed(0)
    model = tfm_rs.models.Seq2SeqTransformer(29, 29, d_model=16, nhead=4, num_encoder_layers=1, num_decoder_layers=3,
                                             dim_feedforward=24, dropout=0.0, max_len=32)
    model.eval()
    plan = {"decoder.0": [0, 1, 3], "decoder.1.cross": [2], "decoder.2": [1, 2], "decoder.2.cross": [0, 1, 3]}
    model, twin = zeroed_twin_and_pruned(model, plan)
    heads = [(layer.self_attn.num_heads, layer.cross_attn.num_heads) for layer in model.decoder_spec().layers]
    assert heads == [(1, 4), (4, 3), (2, 1)]
    src = np.array([[5, 6, 7, 8, 9, 2], [9, 10, 2, 0, 0, 0], [3, 4, 11, 12, 2, 0]])
    for search in (dict(num_beams=1), dict(num_beams=3, num_return_sequences=2), dict(num_beams=4, length_penalty=0.6)):
        same_generations(model.generate(src, max_new_tokens=9, **search),
                         twin.generate(src, max_new_tokens=9, **search), str(search))


def test_pruned_gpt_decodes_exactly_as_the_zeroed_twin():
    model = tfm_rs.models.GPT(37, d_model=24, nhead=3, num_layers=3, dim_feedforward=20, dropout=0.0, max_len=24)
    model.eval()
    model, twin = zeroed_twin_and_pruned(model, {0: [1], 1: [0, 2]})
    prompts = [[3, 4, 5, 6, 7], [8, 9]]
    for search in (dict(num_beams=1), dict(num_beams=3)):
        for prompt in prompts:
            same_generations(model.generate([prompt], max_new_tokens=8, **search),
                             twin.generate([prompt], max_new_tokens=8, **search), f"{prompt} {search}")


def test_decoder_weights_reject_head_counts_that_do_not_match_the_weights():
    model = tiny_seq2seq()
    model.eval()
    model.prune_heads({"decoder.1": [2]})
    from tfm_rs._core import DecoderWeights
    from tfm_rs.decode.weights import _layer, _linear, _norm
    s = model.decoder_spec()
    base = dict(head_dim=4, norm_first=bool(s.norm_first), eps=1e-5, norm="layer", embed=s.embed,
                embed_scale=float(s.embed_scale), positions=s.positions, final_norm=_norm(s.final_norm),
                head=_linear(s.head), activation=s.activation)
    layers = [_layer(layer, "model") for layer in s.layers]
    assert DecoderWeights(dict(base, layers=layers)).vocab_size == 23
    for change, message in [({"self_heads": 4}, "layer 1 self-attention (4 heads of width 4) in_proj"),
                            ({"cross_heads": 2}, "layer 1 cross-attention (2 heads of width 4) in_proj"),
                            ({"self_heads": 0}, "at least one head"),
                            ({"self_heads": 2**62}, "at least one head")]:
        bad = [dict(layers[0]), dict(layers[1], **change)]
        with pytest.raises(tfm_rs.InvalidArgumentError if "least" in message else tfm_rs.ShapeError,
                           match=re.escape(message)) as info:
            DecoderWeights(dict(base, layers=bad))
        assert "panic" not in str(info.value).lower()
    with pytest.raises(tfm_rs.InvalidArgumentError, match="head_dim"):
        DecoderWeights(dict(base, head_dim=0, layers=layers))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="norm must be layer, rms or affine"):
        DecoderWeights(dict(base, norm="batch", layers=layers))
    no_bias = [dict(layers[0], norm_ff=(layers[0]["norm_ff"][0], None)), layers[1]]
    with pytest.raises(tfm_rs.InvalidArgumentError, match="layer 0 feed-forward norm: an affine norm needs a weight"):
        DecoderWeights(dict(base, norm="affine", layers=no_bias))
    with pytest.raises(OverflowError):
        DecoderWeights(dict(base, layers=[dict(layers[0], self_heads=-1), layers[1]]))


@pytest.mark.parametrize("arch", ["GPT", "BertEncoder"])
def test_single_stack_models_prune_heads_by_int_key(arch):
    cls = getattr(tfm_rs.models, arch)
    model = cls(31, d_model=16, nhead=4, num_layers=2, dim_feedforward=20, dropout=0.0, max_len=16)
    count = lambda: sum(int(np.prod(p.shape)) for p in model.parameters())  # noqa: E731
    before = count()
    model.prune_heads({0: [1], 1: [0, 2]})
    model.prune_ffn(amount=0.25)
    assert before - count() == 3 * (4 * 16 * 4 + 3 * 4) + 2 * 5 * (2 * 16 + 1)
    rebuilt = cls.from_config(model.config)
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    ids = np.array([[3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(rebuilt(ids).numpy(), model(ids).numpy())
    if arch == "GPT":
        np.testing.assert_array_equal(np.asarray(rebuilt.generate(ids, max_new_tokens=4).sequences),
                                      np.asarray(model.generate(ids, max_new_tokens=4).sequences))


def test_structured_pruning_bad_input_changes_nothing():
    model = tiny_seq2seq()
    n = model.num_parameters()
    with pytest.raises(tfm_rs.InvalidArgumentError, match="no head"):
        model.prune_heads({"encoder.0": [0, 1], "encoder.1": [0, 1, 2, 3]})
    with pytest.raises(tfm_rs.InvalidArgumentError, match="head indices"):
        model.prune_heads({"encoder.0": [4]})
    with pytest.raises(tfm_rs.InvalidArgumentError, match="no layer 0"):
        model.prune_heads({0: [1]})
    with pytest.raises(tfm_rs.InvalidArgumentError, match="at least one channel"):
        model.prune_ffn({"encoder.0": range(24)})
    with pytest.raises(tfm_rs.InvalidArgumentError, match="amount"):
        model.prune_ffn(amount=1.5)
    assert model.num_parameters() == n and "pruned_heads" not in model.config
    model.prune_heads({"encoder.0": [0, 1, 2]})
    with pytest.raises(tfm_rs.InvalidArgumentError, match="no head"):
        model.prune_heads({"encoder.0": [3]})


def test_head_importance_matches_finite_differences():
    # GELU: a smooth loss, so central differences converge (ReLU kinks spoil them at some seeds).
    tfm_rs.manual_seed(0)
    model = tiny_seq2seq(activation="gelu")
    model.eval()
    model.prune_heads({"decoder.1": [0]})
    rng = np.random.default_rng(0)
    batches = [(rng.integers(3, 23, (2, 5)), np.c_[np.ones((2, 1), int), rng.integers(3, 23, (2, 3))],
                rng.integers(3, 23, (2, 4))) for _ in range(2)]
    raw = tfm_rs.models.head_importance(model, batches, normalize=False)
    assert all(p.grad is None for p in model.parameters())
    attn = model._attention_modules()["decoder.0.cross"]
    eps = 1e-2  # float32 loss: errors seen below 1e-5 at this step on this model
    fds = []
    for h in range(attn.num_heads):
        fd = 0.0
        for batch in batches:
            values = []
            for sign in (1, -1):
                gate = np.ones(attn.num_heads, np.float32)
                gate[h] += sign * eps
                attn.head_gate = tfm_rs.Tensor(gate)
                with tfm_rs.no_grad():
                    values.append(float(model.loss(*batch).numpy()))
            fd += abs((values[0] - values[1]) / (2 * eps))
        del attn.__dict__["head_gate"]
        fds.append(fd)
        assert abs(raw["decoder.0.cross"][h] - fd) <= 1e-3 * fd + 5e-5, (h, raw["decoder.0.cross"][h], fd)
    assert max(fds) > 1e-2  # the gates matter, so the comparison can fail
    normed = tfm_rs.models.head_importance(model, batches)
    assert normed["decoder.1"].shape == (3,)
    for key, s in normed.items():
        assert_close(np.linalg.norm(s), 1.0, 1e-6, 1e-6, key)


# ---------------------------------------------------------------------------------------- explain

@pytest.mark.parametrize("shared", [False, True])
def test_explain_parameters_add_up(shared):
    model = tiny_seq2seq(share_embeddings=shared)
    report = model.explain(batch=2, src_len=5, tgt_len=3, print_fn=None)
    assert sum(r["params"] for r in report["layers"]) == report["total"]["params"] == model.num_parameters()


def test_explain_falls_by_exactly_what_pruning_removes():
    model = tiny_seq2seq()
    B, S, T, E, Dh, Fw = 2, 7, 5, 16, 4, 24
    before = model.explain(batch=B, src_len=S, tgt_len=T, print_fn=None)
    model.prune_heads({"encoder.1": [2], "decoder.0": [0, 1], "decoder.1.cross": [3]})
    model.prune_ffn({"encoder.0": [3, 4]})
    after = model.explain(batch=B, src_len=S, tgt_len=T, print_fn=None)
    rows = lambda r: {x["name"]: x for x in r["layers"]}  # noqa: E731
    b, a = rows(before), rows(after)
    d = lambda name, key: b[name][key] - a[name][key]  # noqa: E731
    # encoder.1: one self-attention head over S positions
    assert d("encoder.1", "flops_proj") == 2 * B * S * E * 3 * Dh + 2 * B * S * Dh * E
    assert d("encoder.1", "flops_attn") == 4 * B * S * S * Dh
    assert d("encoder.1", "params") == 4 * E * Dh + 3 * Dh
    # encoder.0: two feed-forward channels
    assert d("encoder.0", "flops_proj") == 2 * 2 * B * S * E * 2 and d("encoder.0", "params") == 2 * (2 * E + 1)
    # decoder.0: two self-attention heads over T positions, and their KV cache
    assert d("decoder.0", "flops_attn") == 2 * 4 * B * T * T * Dh
    assert d("decoder.0", "kv_bytes") == 4 * 2 * B * T * 2 * Dh
    # decoder.1: one cross-attention head: queries from T positions, keys and values from S
    assert d("decoder.1", "flops_proj") == 2 * B * T * E * Dh + 2 * B * S * E * 2 * Dh + 2 * B * T * Dh * E
    assert d("decoder.1", "flops_attn") == 4 * B * T * S * Dh and d("decoder.1", "kv_bytes") == 4 * 2 * B * S * Dh
    assert after["total"]["params"] == model.num_parameters()
    assert Fw == model.transformer.encoder.layers[1].linear1.out_features


def test_explain_bad_input():
    with pytest.raises(tfm_rs.InvalidArgumentError, match="src_len"):
        tiny_seq2seq().explain(src_len=0)


@pytest.mark.parametrize("arch", ["GPT", "BertEncoder"])
def test_explain_single_stack_models(arch):
    model = getattr(tfm_rs.models, arch)(31, d_model=16, nhead=4, num_layers=2, dim_feedforward=20, dropout=0.0,
                                         max_len=16)
    B, L = 3, 9
    before = model.explain(batch=B, src_len=L, print_fn=None)
    model.prune_heads({1: [0]})
    after = model.explain(batch=B, src_len=L, print_fn=None)
    total = sum(int(np.prod(p.shape)) for p in model.parameters())
    assert sum(r["params"] for r in after["layers"]) == after["total"]["params"] == total
    b, a = before["layers"][1], after["layers"][1]
    assert b["flops_attn"] - a["flops_attn"] == 4 * B * L * L * 4
    assert b["kv_bytes"] - a["kv_bytes"] == (4 * 2 * B * L * 4 if arch == "GPT" else 0)

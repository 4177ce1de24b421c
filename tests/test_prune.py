"""tfm_rs.nn.utils.prune: masks, state_dict keys and gradients against tprune()
(float64) on the same weights, mask composition, training with masks, checkpoints, bad input."""

from __future__ import annotations

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

"""nn.Conv1d against torch.nn.Conv1d in float64 loaded from the same state_dict: outputs and the
gradients of the input, weight and bias."""

from __future__ import annotations

import pytest

from torch_ref import require_torch

torch = require_torch()

import tfm_rs  # noqa: E402
from tfm_rs import nn  # noqa: E402
from helpers import assert_close, leaf, randn  # noqa: E402


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,dilation,groups,bias", [
    (3, 5, 3, 1, 1, 1, 1, True), (4, 6, 5, 2, "valid", 2, 2, True), (6, 6, 3, 1, "same", 3, 6, False),
    (1, 1, 1, 1, 0, 1, 1, True)])
def test_matches_torch(c_in, c_out, k, stride, padding, dilation, groups, bias):
    m = nn.Conv1d(c_in, c_out, k, stride, padding, dilation, groups, bias)
    t = torch.nn.Conv1d(c_in, c_out, k, stride, padding, dilation, groups, bias).double()
    t.load_state_dict({n: torch.tensor(v, dtype=torch.float64) for n, v in m.state_dict().items()}, strict=True)
    x = randn((3, c_in, 17), seed=k)
    xt, xr = leaf(x), torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, yr = m(xt), t(xr)
    assert_close(y, yr.detach().numpy(), 0, 2e-6, "output")
    up = randn(tuple(yr.shape), seed=9)
    (y * tfm_rs.tensor(up)).sum().backward()
    (yr * torch.tensor(up, dtype=torch.float64)).sum().backward()
    assert_close(xt.grad, xr.grad.numpy(), 0, 1e-5, "dx")
    for (name, p), (_, q) in zip(m.named_parameters(), t.named_parameters()):
        assert_close(p.grad, q.grad.numpy(), 0, 1e-5, f"d{name}")

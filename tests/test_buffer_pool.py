"""Op outputs reuse dropped tensors' buffers (`rust/cpu/alloc.rs`): results must not depend on
whether the pool is on (stale contents must never leak into an output)."""

import os
import subprocess
import sys

SCRIPT = r"""
import numpy as np, tfm_rs
from tfm_rs.models import transformer_tiny
from tfm_rs.optim import Adam
tfm_rs.manual_seed(0)
rng = np.random.default_rng(0)
model = transformer_tiny(1000)
opt = Adam(model.parameters(), lr=1e-3)
for _ in range(4):
    # Batches of varying lengths whose logits and their gradients (16·t·1000 floats) are above
    # the pool's minimum size, so later steps run on recycled buffers.
    b, s, t = 16, int(rng.integers(20, 40)), int(rng.integers(20, 40))
    src, tgt = rng.integers(3, 1000, (b, s)), rng.integers(3, 1000, (b, t + 1))
    loss = model.loss(src, tgt[:, :-1], tgt[:, 1:], label_smoothing=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(repr(loss.item()))
"""


def _losses(pool_mb):
    env = dict(os.environ, TFM_RS_POOL_MB=pool_mb)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_training_is_bit_identical_with_and_without_the_pool():
    with_pool, without = _losses("2048"), _losses("0")
    assert len(with_pool) == 4
    assert with_pool == without

"""Device-resident training: tensors and modules moved with ``.to("gpu")``, the graph and its
gradients on the GPU, optimizer steps there, and losses equal to the same training on the CPU.

Runs on whatever adapter wgpu finds (lavapipe in CI, see ``test_gpu.py``); models stay tiny.
Tolerance: the losses of a few steps agree to 1e-6 relative. Observed on lavapipe (llvmpipe,
Mesa 22.3.6): at most 8.6e-8 for the three models' three steps and 2.6e-7 for four steps of
``tfm-rs train``; the GPU kernels reproduce the CPU's formulas and dropout masks, only summation
orders differ. A run resumed on the same device logs bit-identical losses.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import tfm_rs
from tfm_rs import nn, optim
from tfm_rs.models import GPT, BertEncoder, Seq2SeqTransformer
from helpers import require_gpu

LOSS_RTOL = 1e-6  # about 4x the largest difference observed (see above)


@pytest.fixture(autouse=True)
def gpu():
    require_gpu()


def train(model: nn.Module, device: str, batch, steps: int = 3, sgd: bool = False):
    """Losses of `steps` steps (Adam or SGD with momentum, clipping) from `model`'s weights."""
    model = copy.deepcopy(model).to(device)
    tfm_rs.manual_seed(1234)  # the same dropout masks on both devices
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if sgd else optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(*batch)
        assert loss.device == device
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses, model


def assert_same_training(model: nn.Module, batch, **kw) -> nn.Module:
    cpu, _ = train(model, "cpu", batch, **kw)
    gpu, trained = train(model, "gpu", batch, **kw)
    np.testing.assert_allclose(gpu, cpu, rtol=LOSS_RTOL, err_msg="GPU vs CPU losses")
    assert cpu[-1] < cpu[0], "training did not move the loss; the comparison would be vacuous"
    return trained


def test_gpt_trains_on_the_gpu_with_the_cpu_losses():
    rng = np.random.default_rng(0)
    model = GPT(vocab_size=17, d_model=16, nhead=2, num_layers=2, dropout=0.1, max_len=12, pad_id=0)
    ids = rng.integers(1, 17, size=(3, 9))
    ids[0, 6:] = 0  # padding: ignored targets and a key padding mask
    trained = assert_same_training(model, (ids,))
    p = trained.head.weight
    assert p.device == "gpu" and p.grad.device == "gpu"
    assert all(b.device == "gpu" for b in trained.buffers())


def test_seq2seq_trains_on_the_gpu_with_the_cpu_losses():
    rng = np.random.default_rng(1)
    model = Seq2SeqTransformer(19, 23, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=2,
                               dim_feedforward=24, dropout=0.1, max_len=16)
    src = rng.integers(3, 19, size=(2, 7))
    tgt = rng.integers(3, 23, size=(2, 6))
    src[1, 5:] = 0
    assert_same_training(model, (src, tgt[:, :-1], tgt[:, 1:]), sgd=True)


def test_bert_trains_on_the_gpu_with_the_cpu_losses():
    rng = np.random.default_rng(2)
    model = BertEncoder(vocab_size=21, d_model=16, nhead=2, num_layers=1, dim_feedforward=32, max_len=10,
                        dropout=0.0)
    ids = rng.integers(5, 21, size=(2, 8))
    labels = np.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    ids[:, 2] = 4
    assert_same_training(model, (ids, labels))


def test_tensor_to_device_round_trip_and_gradients_come_back():
    x = tfm_rs.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = x.to("gpu")
    assert (x.device, y.device) == ("cpu", "gpu")
    assert y.to("gpu") is not None and y.to("wgpu").device == "gpu"
    z = (y * y).sum()
    z.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * x.numpy())
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(y.cpu().numpy(), x.numpy())
    assert repr(y).startswith("tensor(")


def test_device_errors_are_clear():
    a = tfm_rs.tensor(np.ones((2, 3), np.float32)).to("gpu")
    b = tfm_rs.tensor(np.ones((3, 2), np.float32))
    with pytest.raises(tfm_rs.DeviceError, match=r"^matmul: .*gpu and cpu"):
        a @ b
    lin = nn.Linear(3, 2).to("gpu")
    with pytest.raises(tfm_rs.DeviceError, match="linear"):
        lin(b.t())
    with pytest.raises(tfm_rs.InvalidArgumentError, match="wgpu"):
        a.to("cuda")
    with pytest.raises(tfm_rs.InvalidArgumentError, match="unknown device"):
        a.to("tpu")
    p = nn.Parameter(np.zeros((2, 2), np.float32)).to("gpu")  # a non-leaf copy, as in PyTorch
    with pytest.raises(tfm_rs.DeviceError, match="grad"):
        lin.weight.grad = np.zeros((2, 3), np.float32)
    assert p.device == "gpu"


def test_python_scalars_meet_gpu_tensors_on_the_gpu():
    a = tfm_rs.tensor(np.array([1.0, 2.0], np.float32)).to("gpu")
    assert (a * 2.0).device == "gpu" and (1.0 - a).device == "gpu"
    np.testing.assert_array_equal((1.0 - a * 2.0).numpy(), [-1.0, -3.0])


def test_gpu_state_dict_saves_and_loads():
    model = GPT(vocab_size=11, d_model=8, nhead=2, num_layers=1, dropout=0.0, max_len=8).to("gpu")
    state = model.state_dict()  # downloads
    assert all(isinstance(v, np.ndarray) for v in state.values())
    other = GPT(vocab_size=11, d_model=8, nhead=2, num_layers=1, dropout=0.0, max_len=8).to("gpu")
    other.load_state_dict(state)
    assert all(p.device == "gpu" for p in other.parameters())
    ids = np.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(other(ids).numpy(), model(ids).numpy(), rtol=0, atol=0)


def test_generate_on_a_gpu_model_decodes_on_the_cpu():
    model = GPT(vocab_size=11, d_model=8, nhead=2, num_layers=1, dropout=0.0, max_len=12)
    want = model.generate([1, 2, 3], max_new_tokens=4).sequences
    got = model.to("gpu").generate([1, 2, 3], max_new_tokens=4).sequences
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---------------------------------------------------------------------------------- tfm-rs train --device gpu

# The numbers task on a tiny model, as tests/test_cli_run.py trains it, with dropout on (the GPU
# reproduces the CPU's masks) and clipping (the default clip_norm 1.0).
TINY_RUN = ["--preset", "tiny", "--num-train", "200", "--num-heldout", "20", "--max-tokens", "300", "--warmup", "2",
            "--lr", "3e-3", "--schedule", "noam", "--dropout", "0.1", "--quiet"]


def cli_train(tmp_path, capsys, name, *flags):
    from tfm_rs.cli import main

    status = main(["train", *TINY_RUN, *map(str, flags), "--out", str(tmp_path / name)])
    out, err = capsys.readouterr()
    assert status == 0, err
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return out, [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


def test_cli_trains_on_the_gpu_with_the_cpu_losses_and_resumes(tmp_path, capsys):
    _, cpu = cli_train(tmp_path, capsys, "cpu", "--max-steps", "4")
    out, gpu = cli_train(tmp_path, capsys, "gpu", "--max-steps", "4", "--device", "gpu")
    assert "GPU " in out and tfm_rs.gpu_info()["name"] in out
    np.testing.assert_allclose(gpu, cpu, rtol=LOSS_RTOL, err_msg="GPU vs CPU losses of tfm-rs train")
    assert len(cpu) == 4 and cpu[-1] < cpu[0]
    # Resume on the GPU: a run stopped after 2 steps and continued to 4 logs the same losses.
    cli_train(tmp_path, capsys, "split", "--max-steps", "2", "--device", "gpu")
    out, split = cli_train(tmp_path, capsys, "split", "--resume", "--max-steps", "4")
    assert "resumed at step 2" in out and "GPU " in out  # the saved config keeps the device
    np.testing.assert_array_equal(split, gpu, err_msg="resumed GPU run")
    # The GPU-trained checkpoint resumes on the CPU, and decodes there.
    out, on_cpu = cli_train(tmp_path, capsys, "split", "--resume", "--max-steps", "5", "--device", "cpu")
    assert "resumed at step 4" in out and "SIMD" in out and len(on_cpu) == 5
    from tfm_rs import runs

    run = runs.load_run(tmp_path / "gpu", need_valid=False)
    assert all(p.device == "cpu" for p in run.model.parameters())
    assert len(runs.translate_sentences(run.model, run.tokenizer, ["3 452"], task=run.data.task)) == 1


def test_trainer_moves_the_model_and_adam_state_to_the_gpu():
    from tfm_rs.train import Seq2SeqTrainer, TrainConfig

    model = Seq2SeqTransformer(9, 9, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=16, dropout=0.0, max_len=8)
    data = ([[3, 4, 5], [6, 7]], [[4, 5], [8, 3, 3]])
    trainer = Seq2SeqTrainer(model, data, TrainConfig(max_tokens=40, warmup_steps=1, device="gpu"))
    trainer.train(max_steps=1, verbose=False)
    assert all(p.device == "gpu" for p in model.parameters())
    state = trainer.optimizer.state[0]
    assert state["exp_avg"].device == "gpu" and state["exp_avg_sq"].device == "gpu"
    assert trainer.validate()["type"] == "valid"
    # No device in the config: the model stays where it is (here, already on the GPU).
    Seq2SeqTrainer(model, data, TrainConfig(max_tokens=40, warmup_steps=1))
    assert all(p.device == "gpu" for p in model.parameters())
    with pytest.raises(tfm_rs.InvalidArgumentError, match="device must be one of cpu, gpu"):
        TrainConfig(device="cuda")

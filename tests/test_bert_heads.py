"""The BERT fine-tuning heads against Hugging Face ``transformers`` (float32; 1e-4 relative to the
largest magnitude, as in test_pretrained_hf.py): checkpoints of ``BertForSequenceClassification``
and ``BertForTokenClassification`` give the same logits on padded batches and the same loss for
every problem type; a bare encoder loads with a fresh classifier and a warning; a classifier
trained here and saved loads in ``transformers`` with the same logits; bad input is a TfmError."""

import warnings

import numpy as np
import pytest

from hf_ref import require

transformers = require("transformers", "the BERT head parity tests")
torch = require("torch", "the BERT head parity tests")

import tfm_rs  # noqa: E402
from tfm_rs.models import BertForSequenceClassification, BertForTokenClassification  # noqa: E402
from tfm_rs.optim import Adam  # noqa: E402
from tfm_rs.pretrained import UnsupportedConfigError, WeightsMismatchError  # noqa: E402

from test_pretrained_hf import bert_config, close, padded_ids  # noqa: E402

VOCAB = 61


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = padded_ids(rng, VOCAB, [17, 5, 1, 11], 17)
    types = np.where(np.arange(17) >= 6, 1, 0)[None].repeat(4, 0) * (ids != 0)
    return rng, ids, types, ids != 0


def _hf(model, ids, types, mask, labels=None):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                     token_type_ids=torch.tensor(types), labels=None if labels is None else torch.tensor(labels))


@pytest.mark.parametrize("num_labels, problem_type, label_kind", [
    (3, None, "class"), (1, None, "score"), (4, "multi_label_classification", "multi"),
    (2, "single_label_classification", "class"), (3, "regression", "multi")])
def test_sequence_classification_matches_transformers(tmp_path, num_labels, problem_type, label_kind):
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(
        bert_config(num_labels=num_labels, problem_type=problem_type)).eval()
    hf.save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path)
    rng, ids, types, mask = _batch()
    labels = {"class": rng.integers(0, num_labels, 4), "score": rng.standard_normal(4).astype(np.float32),
              "multi": rng.integers(0, 2, (4, num_labels)).astype(np.float32)}[label_kind]
    ref = _hf(hf, ids, types, mask, labels)
    close(model(ids, types).numpy(), ref.logits.numpy())
    np.testing.assert_allclose(model.loss(ids, labels, types).item(), ref.loss.item(), rtol=1e-5)
    assert model.config["problem_type"] == hf.config.problem_type  # chosen by the same rule


def test_token_classification_matches_transformers(tmp_path):
    torch.manual_seed(1)
    hf = transformers.BertForTokenClassification(bert_config(num_labels=5)).eval()
    hf.save_pretrained(tmp_path)
    model = BertForTokenClassification.from_pretrained(tmp_path)
    rng, ids, types, mask = _batch(1)
    labels = np.where(mask, rng.integers(0, 5, ids.shape), -100)  # padding labelled -100, as HF's collator does
    ref = _hf(hf, ids, types, mask, labels)
    close(model(ids, types).numpy()[mask], ref.logits.numpy()[mask])
    np.testing.assert_allclose(model.loss(ids, labels, types).item(), ref.loss.item(), rtol=1e-5)


@pytest.mark.parametrize("base, fresh", [
    ("BertModel", ["classifier.bias", "classifier.weight"]),
    ("BertForMaskedLM", ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                         "classifier.weight"])])
def test_a_bare_encoder_gets_a_fresh_classifier_with_a_warning(tmp_path, base, fresh):
    torch.manual_seed(2)
    hf = getattr(transformers, base)(bert_config()).eval()
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="newly initialized") as record:
        model = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    assert str(fresh) in str(record[0].message)
    assert model(np.array([[5, 6, 7]])).shape == (1, 3)
    _, ids, types, mask = _batch(2)
    with torch.no_grad():
        encoder = hf if base == "BertModel" else hf.bert
        ref = encoder(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                      token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    close(model.bert.encode(ids, types).numpy()[mask], ref[mask])
    with warnings.catch_warnings():  # a token classifier has no pooler: only the classifier is new
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match=r"\['classifier.bias', 'classifier.weight'\]"):
            BertForTokenClassification.from_pretrained(tmp_path)


def test_fine_tuned_here_loads_in_transformers(tmp_path):
    tfm_rs.manual_seed(3)
    rng = np.random.default_rng(3)
    seq = BertForSequenceClassification(num_labels=3, id2label=["neg", "neutral", "pos"], vocab_size=53, d_model=16,
                                        nhead=2, num_layers=2, dim_feedforward=40, max_len=24, dropout=0.1)
    tok = BertForTokenClassification(num_labels=4, vocab_size=53, d_model=16, nhead=2, num_layers=2,
                                     dim_feedforward=40, max_len=24, dropout=0.1)
    ids = padded_ids(rng, 53, [12, 9, 5, 12, 3, 7], 12)
    mask = ids != 0
    targets = {seq: ids[:, 0] % 3, tok: np.where(mask, ids % 4, -100)}  # learnable from the tokens
    for model, labels in targets.items():
        opt = Adam(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(30):
            opt.zero_grad()
            loss = model.loss(ids, labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], losses  # gradients reach every part and the loss falls
    seq.save_pretrained(tmp_path / "seq")
    tok.save_pretrained(tmp_path / "tok")
    hf_seq = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "seq").eval()
    hf_tok = transformers.BertForTokenClassification.from_pretrained(tmp_path / "tok").eval()
    assert hf_seq.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert hf_seq.config.problem_type == "single_label_classification"
    att = torch.tensor(mask.astype(np.int64))
    with torch.no_grad():
        close(seq.eval()(ids).numpy(), hf_seq(torch.tensor(ids), attention_mask=att).logits.numpy())
        close(tok.eval()(ids).numpy()[mask], hf_tok(torch.tensor(ids), attention_mask=att).logits.numpy()[mask])
    back = BertForSequenceClassification.from_pretrained(tmp_path / "seq")
    np.testing.assert_array_equal(back(ids).numpy(), seq(ids).numpy())
    assert back.label_names() == ["neg", "neutral", "pos"]


def test_bad_input_gives_tfm_errors(tmp_path):
    kw = dict(vocab_size=31, d_model=8, nhead=2, num_layers=1, dim_feedforward=12, max_len=10)
    seq = BertForSequenceClassification(num_labels=3, **kw)
    ids = np.array([[5, 6, 7], [8, 9, 0]])
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="label 3 is neither -100 nor a class in"):
        seq.loss(ids, [0, 3])
    with pytest.raises(tfm_rs.ShapeError, match=r"labels have shape \(3,\), the logits need \(2,\)"):
        seq.loss(ids, [0, 1, 2])
    with pytest.raises(tfm_rs.ShapeError, match="multi_label_classification labels have shape"):
        BertForSequenceClassification(num_labels=3, **kw).loss(ids, np.zeros((2, 2), np.float32))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="class labels must be integers"):
        BertForTokenClassification(num_labels=3, **kw).loss(ids, np.zeros((2, 3), np.float32))
    with pytest.raises(tfm_rs.InvalidArgumentError, match="num_labels must be a positive integer"):
        BertForSequenceClassification(num_labels=0, **kw)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="id2label names 2 labels, num_labels=3"):
        BertForSequenceClassification(num_labels=3, id2label=["a", "b"], **kw)
    with pytest.raises(tfm_rs.InvalidArgumentError, match="problem_type must be None or one of"):
        BertForSequenceClassification(problem_type="ranking", **kw)
    with pytest.raises(tfm_rs.IndexOutOfRangeError, match="token id 40"):
        seq(np.array([[5, 40]]))
    with pytest.raises(UnsupportedConfigError, match="pooling='mean' has no equivalent"):
        BertForSequenceClassification(pooling="mean", **kw).save_pretrained(tmp_path / "mean")
    seq.save_pretrained(tmp_path / "three")
    with pytest.raises(WeightsMismatchError, match="classifier has 3 labels, num_labels=5 was asked"):
        BertForSequenceClassification.from_pretrained(tmp_path / "three", num_labels=5)


def test_mean_pooling_is_the_mean_of_the_real_tokens():
    tfm_rs.manual_seed(4)
    model = BertForSequenceClassification(num_labels=2, pooling="mean", vocab_size=31, d_model=8, nhead=2,
                                          num_layers=1, dim_feedforward=12, max_len=10, dropout=0.0)
    ids = np.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    h = model.bert.encode(ids).numpy().astype(np.float64)
    pooled = np.stack([h[0, :3].mean(0), h[1].mean(0)])
    w, b = model.classifier.weight.numpy(), model.classifier.bias.numpy()
    np.testing.assert_allclose(model(ids).numpy(), pooled @ w.T + b, rtol=1e-5, atol=1e-6)
    # padding does not change a row's logits
    np.testing.assert_allclose(model(ids[:1, :3]).numpy(), model(ids).numpy()[:1], rtol=1e-5, atol=1e-6)

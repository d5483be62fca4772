from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from bayesquant.eval import metrics as M


@pytest.fixture
def probs_labels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 4, generator=g, dtype=torch.float64) * 2
    probs = torch.softmax(logits, -1)
    labels = torch.randint(0, 4, (200,), generator=g)
    return probs, labels


def test_accuracy_nll_brier_match_scikit_learn(probs_labels):
    p, y = probs_labels
    assert M.accuracy(p, y) == pytest.approx(accuracy_score(y, p.argmax(-1)))
    assert M.nll(p, y) == pytest.approx(log_loss(y, p.numpy(), labels=range(4)), rel=1e-12)
    # scikit-learn's multiclass Brier score is the mean over examples of the squared error summed over classes
    assert M.brier(p, y) == pytest.approx(brier_score_loss(y, p.numpy(), labels=range(4)), rel=1e-12)


def test_ece_hand_computed():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.3 … top class 0.4 (wrong)
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 0])
    # bins: (0.8667, 0.9333] holds two with acc 0.5, conf 0.9; (0.5333, 0.6] holds two (0.6 and 0.6):
    # one correct (conf 0.6), one wrong (conf 0.6) → acc 0.5, conf 0.6
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.6)
    assert M.ece(p, y) == pytest.approx(expected)
    perfect = torch.eye(3, dtype=torch.float64)
    assert M.ece(perfect, torch.arange(3)) == 0.0


def test_entropy_and_mutual_information():
    uniform = torch.full((1, 4), 0.25, dtype=torch.float64)
    assert float(M.entropy(uniform)) == pytest.approx(math.log(4))
    p = torch.softmax(torch.randn(5, 3, dtype=torch.float64), -1)
    np.testing.assert_allclose(M.entropy(p).numpy(), scipy_entropy(p.numpy(), axis=-1))
    # two confident but disagreeing samples: predictive entropy log 2, expected entropy ≈ 0, MI ≈ log 2
    samples = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    assert float(M.predictive_entropy(samples)) == pytest.approx(math.log(2))
    assert float(M.mutual_information(samples)) == pytest.approx(math.log(2), abs=1e-9)
    same = torch.stack([p, p])
    assert torch.allclose(M.mutual_information(same), torch.zeros(5, dtype=torch.float64))


def test_auroc_matches_scikit_learn_and_rejects_one_class():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    pos = torch.tensor([0, 0, 1, 1])
    assert M.auroc(scores, pos) == pytest.approx(roc_auc_score(pos, scores)) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both positive and negative"):
        M.auroc(scores, torch.ones(4))


def test_agreement_and_kl(probs_labels):
    p, _ = probs_labels
    q = torch.softmax(torch.log(p) + 0.3 * torch.randn_like(p), -1)
    assert M.agreement(p, p) == 1.0
    assert M.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    expected = float(np.mean(scipy_entropy(p.numpy(), q.numpy(), axis=-1)))
    assert M.kl_divergence(p, q) == pytest.approx(expected, rel=1e-10)
    assert M.agreement(p, q) == pytest.approx(float((p.argmax(-1) == q.argmax(-1)).double().mean()))


def test_perplexity():
    assert M.perplexity(math.log(29.2)) == pytest.approx(29.2)


def test_paired_bootstrap_brackets_the_difference_and_cancels_shared_noise(probs_labels):
    probs, labels = probs_labels
    same = M.paired_bootstrap(M.ece, probs, probs.clone(), labels, resamples=200)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "fraction_below_zero": 0.0}
    # a model that always puts 0.9 on the right class beats one at 0.6 on every resample
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    sharp, soft = 0.9 * onehot + 0.1 / 4, 0.6 * onehot + 0.4 / 4
    r = M.paired_bootstrap(M.nll, sharp, soft, labels, resamples=200)
    assert r["difference"] == pytest.approx(M.nll(sharp, labels) - M.nll(soft, labels))
    assert r["low"] <= r["difference"] <= r["high"] < 0
    assert r["fraction_below_zero"] == 1.0
    # a noisy comparison gives an interval around the difference that contains it and has width
    r = M.paired_bootstrap(M.ece, probs, probs.roll(1, 0), labels, resamples=300, seed=3)
    assert r["low"] < r["difference"] < r["high"]
    again = M.paired_bootstrap(M.ece, probs, probs.roll(1, 0), labels, resamples=300, seed=3)
    assert again == r
    with pytest.raises(ValueError, match="same examples"):
        M.paired_bootstrap(M.ece, probs, probs[:10], labels)


def test_mcnemar_exact_counts_the_examples_only_one_model_gets_right():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    right = torch.nn.functional.one_hot(labels, 3).double()
    wrong = right.roll(1, -1)
    a = right.clone()
    b = right.clone()
    b[:10] = wrong[:10]  # B misses the first ten, A gets them: a 10-0 split
    r = M.mcnemar_exact(a, b, labels)
    assert (r["a_only"], r["b_only"]) == (10, 0)
    assert r["p_value"] == pytest.approx(2 * 0.5**10)
    b[0], a[10] = right[0], wrong[10]  # both right on the first, only B on the eleventh: 9-1
    r = M.mcnemar_exact(a, b, labels)
    assert (r["a_only"], r["b_only"]) == (9, 1)
    assert r["p_value"] == pytest.approx(2 * (1 + 10) / 2**10)
    assert M.mcnemar_exact(a, a.clone(), labels) == {"a_only": 0, "b_only": 0, "p_value": 1.0}
    with pytest.raises(ValueError, match="same examples"):
        M.mcnemar_exact(a, b[:5], labels)

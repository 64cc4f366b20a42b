"""The metrics against plain loops over members, timesteps and rows (numpy, float64)."""

import math

import numpy as np
import pytest
import torch

from cellsearch.tasks.metrics import sigmoid_stats, softmax_stats, summarize

T, K, B, V = 5, 3, 4, 7


def random_mask(rng):
    mask = (rng.random((T, B)) < 0.6).astype(np.float32)
    mask[0, 0] = 1
    return mask


def reference_softmax(logits, targets, mask):
    loss, correct = np.zeros(K), np.zeros(K)
    for k in range(K):
        for t in range(T):
            for b in range(B):
                if mask[t, b]:
                    z = logits[t, k, b].astype(np.float64)
                    log_z = math.log(sum(math.exp(v) for v in z))
                    loss[k] += log_z - z[targets[t, b]]
                    correct[k] += int(np.argmax(z) == targets[t, b])
    return loss, correct, mask.sum()


def reference_sigmoid(logits, targets, mask):
    nll, tp, fp, fn = (np.zeros(K) for _ in range(4))
    for k in range(K):
        for t in range(T):
            for b in range(B):
                if not mask[t, b]:
                    continue
                for n in range(logits.shape[-1]):
                    p = 1 / (1 + math.exp(-float(logits[t, k, b, n])))
                    y = targets[t, b, n]
                    nll[k] -= math.log(p) if y else math.log(1 - p)
                    on = p > 0.5
                    tp[k] += on and y
                    fp[k] += on and not y
                    fn[k] += (not on) and y
    return nll, tp, fp, fn, mask.sum()


def test_softmax_stats_match_a_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(T, K, B, V)).astype(np.float32) * 2
    targets = rng.integers(0, V, size=(T, B))
    mask = random_mask(rng)
    stats = softmax_stats(torch.tensor(logits), torch.tensor(targets), torch.tensor(mask))
    loss, correct, count = reference_softmax(logits, targets, mask)
    np.testing.assert_allclose(stats["loss_sum"].numpy(), loss, rtol=1e-5)
    np.testing.assert_array_equal(stats["correct"].numpy(), correct)
    assert stats["count"].item() == count
    metrics = summarize(stats)
    np.testing.assert_allclose(metrics["accuracy"].numpy(), correct / count, rtol=1e-6)
    np.testing.assert_allclose(metrics["nll"].numpy(), loss / count, rtol=1e-5)
    np.testing.assert_allclose(metrics["perplexity"].numpy(), np.exp(loss / count), rtol=1e-5)


def test_sigmoid_stats_match_a_loop():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(T, K, B, 88)).astype(np.float32) * 3
    targets = (rng.random((T, B, 88)) < 0.1).astype(np.float32)
    mask = random_mask(rng)
    stats = sigmoid_stats(torch.tensor(logits), torch.tensor(targets), torch.tensor(mask))
    nll, tp, fp, fn, count = reference_sigmoid(logits, targets, mask)
    np.testing.assert_allclose(stats["nll_sum"].numpy(), nll, rtol=1e-5)
    for key, expected in (("true_pos", tp), ("false_pos", fp), ("false_neg", fn)):
        np.testing.assert_array_equal(stats[key].numpy(), expected)
    metrics = summarize(stats)
    np.testing.assert_allclose(metrics["nll"].numpy(), nll / count, rtol=1e-5)
    np.testing.assert_allclose(metrics["frame_accuracy"].numpy(), tp / (tp + fp + fn), rtol=1e-6)


def test_a_training_step_gets_the_loss_alone_the_same():
    rng = np.random.default_rng(3)
    mask = torch.tensor(random_mask(rng))
    softmax = (torch.tensor(rng.normal(size=(T, K, B, V)), dtype=torch.float32),
               torch.tensor(rng.integers(0, V, size=(T, B))), mask)
    sigmoid = (torch.tensor(rng.normal(size=(T, K, B, 88)), dtype=torch.float32),
               torch.tensor((rng.random((T, B, 88)) < 0.1).astype(np.float32)), mask)
    for stats, arguments, loss in ((softmax_stats, softmax, "loss_sum"),
                                   (sigmoid_stats, sigmoid, "nll_sum")):
        alone = stats(*arguments, loss_only=True)
        assert list(alone) == [loss]
        torch.testing.assert_close(alone[loss], stats(*arguments)[loss])


def test_accumulating_windows_equals_one_pass():
    rng = np.random.default_rng(2)
    logits = torch.tensor(rng.normal(size=(2 * T, K, B, V)), dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, V, size=(2 * T, B)))
    mask = torch.tensor(np.concatenate([random_mask(rng), random_mask(rng)]))
    whole = summarize(softmax_stats(logits, targets, mask))
    first, second = (softmax_stats(logits[w], targets[w], mask[w])
                     for w in (slice(0, T), slice(T, 2 * T)))
    total = {key: first[key] + second[key] for key in first}
    for key, value in summarize(total).items():
        torch.testing.assert_close(value, whole[key])


def test_loss_sums_keep_gradients_and_masked_steps_get_none():
    logits = torch.randn(T, K, B, V, requires_grad=True)
    mask = torch.zeros(T, B)
    mask[1, 2] = 1
    softmax_stats(logits, torch.zeros(T, B, dtype=torch.long), mask)["loss_sum"].sum().backward()
    grad = logits.grad.abs().sum(dim=(1, 3))  # (T, B)
    assert grad[1, 2] > 0 and grad.sum() == grad[1, 2]


def test_silence_predicted_as_silence_is_a_perfect_frame():
    logits = torch.full((1, 2, 1, 88), -5.0)
    logits[0, 1, 0, 3] = 5.0  # member 1 plays a note nobody asked for
    metrics = summarize(sigmoid_stats(logits, torch.zeros(1, 1, 88), torch.ones(1, 1)))
    assert metrics["frame_accuracy"].tolist() == [1.0, 0.0]
    assert metrics["nll"][0] == pytest.approx(88 * math.log1p(math.exp(-5)), rel=1e-5)

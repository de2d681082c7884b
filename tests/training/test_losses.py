import math

import pytest
import torch

from lavit.training.losses import concept_loss, ntp_loss, read_loss, total_loss, traj_loss


def test_ntp_equals_hand_computed_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 2])
    expected = (-(2 - math.log(math.e ** 2 + 2)) - (0 - math.log(math.e + 2))) / 2
    loss = ntp_loss(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_ntp_without_labels_is_an_error():
    with pytest.raises(ValueError, match="no labelled tokens"):
        ntp_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_concept_is_one_minus_mean_cosine():
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    v_sem = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    expected = 1 - (1.0 + (-1 / math.sqrt(2))) / 2
    loss = concept_loss(pred, v_sem)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert pred.grad.abs().sum() > 0


def test_concept_dimension_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="teacher dimension does not match the head"):
        concept_loss(torch.zeros(2, 4), torch.zeros(2, 5))


def test_traj_is_sum_over_latents_mean_over_batch_of_kl():
    target = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])  # [B=2, N=3], sparse like Top-K
    student = torch.tensor([[[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]],
                            [[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]]], requires_grad=True)  # [B, K=2, N]
    kl = lambda t, s: sum(ti * math.log(ti / si) for ti, si in zip(t, s) if ti > 0)  # noqa: E731
    expected = ((kl([.5, .5, 0], [.25, .5, .25]) + kl([.5, .5, 0], [.5, .25, .25]))
                + (kl([1, 0, 0], [.5, .25, .25]) + kl([1, 0, 0], [.8, .1, .1]))) / 2
    loss = traj_loss(student, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert student.grad.abs().sum() > 0
    assert traj_loss(target[:, None, :].expand(2, 2, 3), target).item() == pytest.approx(0.0, abs=1e-7)


def test_traj_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="does not match the student map"):
        traj_loss(torch.full((1, 2, 4), 0.25), torch.full((1, 5), 0.2))


def test_total_is_eq9():
    ntp, concept, traj = torch.tensor(2.0), torch.tensor(0.5), torch.tensor(1.5)
    assert total_loss(ntp, concept, traj, 0.3).item() == pytest.approx(2.0 + 0.3 * 2.0)
    assert total_loss(ntp, None, traj, 0.3).item() == pytest.approx(2.0 + 0.3 * 1.5)
    assert total_loss(ntp, None, None, 0.3).item() == pytest.approx(2.0)


def test_read_is_minus_mean_log_mass_with_its_gradient():
    mass = torch.tensor([0.5, 0.25], requires_grad=True)
    loss = read_loss(mass)
    assert loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)
    loss.backward()
    assert torch.allclose(mass.grad, torch.tensor([-1 / (2 * 0.5), -1 / (2 * 0.25)]))  # d/dm of -log(m)/B
    ntp = torch.tensor(2.0)
    assert total_loss(ntp, None, None, 0.3, torch.tensor(1.5), 0.2).item() == pytest.approx(2.0 + 0.2 * 1.5)

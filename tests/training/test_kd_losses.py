"""The distillation term of method=kd / lavit_kd: the teacher's stored top-k matched on the partition {top-k…, rest},
against hand-computed values, the full-vocabulary divergences, gradient checks, and the q_rest → 0 limit."""

import math

import pytest
import torch
import torch.nn.functional as F

from lavit.training.losses import (
    REST_FLOOR,
    KdObjective,
    generalized_jsd,
    kd_divergence,
    kd_ntp_loss,
    log1mexp,
    topk_partition,
)


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def softmax(z):
    m = max(z)
    e = [math.exp(x - m) for x in z]
    return [x / sum(e) for x in e]


def test_forward_kl_on_the_partition_equals_the_hand_computed_value():
    z = [2.0, 1.0, 0.0, -1.0, 0.5]  # student logits over V = 5
    p_top = [0.6, 0.3]  # teacher's top-2, on student ids 0 and 3; p_rest = 0.1
    q = softmax(z)
    q_part = [q[0], q[3], 1 - q[0] - q[3]]
    expected = kl([0.6, 0.3, 0.1], q_part)
    got = kd_divergence(torch.tensor([z]), torch.tensor([[0, 3]]), torch.tensor([p_top]).log(), beta=0.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_reverse_kl_and_jsd_on_the_partition_equal_the_hand_computed_values():
    z = [0.3, -0.2, 1.1, 0.0]
    q = softmax(z)
    p = [0.5, 0.2, 0.3]  # top-2 on student ids 2 and 1, then the rest
    q_part = [q[2], q[1], q[0] + q[3]]
    args = (torch.tensor([z]), torch.tensor([[2, 1]]), torch.tensor([[math.log(0.5), math.log(0.2)]]))
    assert kd_divergence(*args, beta=1.0).item() == pytest.approx(kl(q_part, p), rel=1e-5)
    beta = 0.3
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q_part)]
    assert kd_divergence(*args, beta=beta).item() == pytest.approx(beta * kl(p, m) + (1 - beta) * kl(q_part, m),
                                                                   rel=1e-5)


def test_unmapped_entries_move_their_teacher_mass_to_the_rest():
    z = [1.0, 0.0, -0.5, 2.0]
    q = softmax(z)
    # top-3: student id 3 (0.5), an unmapped token (0.2), student id 0 (0.1): p_rest = 1 - 0.5 - 0.1 = 0.4
    got = kd_divergence(torch.tensor([z]), torch.tensor([[3, -1, 0]]),
                        torch.tensor([[math.log(0.5), math.log(0.2), math.log(0.1)]]), beta=0.0)
    assert got.item() == pytest.approx(kl([0.5, 0.1, 0.4], [q[3], q[0], q[1] + q[2]]), rel=1e-6)
    # every entry unmapped: one bucket on both sides, nothing to match
    none = kd_divergence(torch.tensor([z]), torch.tensor([[-1, -1]]), torch.tensor([[-0.1, -3.0]]), beta=0.5)
    assert none.item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
def test_with_the_whole_vocabulary_as_top_k_it_is_the_full_divergence(beta):
    torch.manual_seed(0)
    v = 11
    student, teacher = (torch.randn(3, v) * 2).requires_grad_(), torch.randn(3, v) * 2
    log_p, log_q = teacher.log_softmax(-1), student.log_softmax(-1)
    order = torch.randperm(v).expand(3, v)  # the top-k list in any order
    got = kd_divergence(student, order, log_p.gather(1, order), beta)
    got.sum().backward()  # no rest bucket: its placeholder must not leak a NaN gradient
    assert torch.isfinite(student.grad).all()
    if beta == 0.0:
        want = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    elif beta == 1.0:
        want = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    else:
        m = beta * log_p.exp() + (1 - beta) * log_q.exp()
        want = (beta * (log_p.exp() * (log_p - m.log())).sum(-1)
                + (1 - beta) * (log_q.exp() * (log_q - m.log())).sum(-1))
    assert torch.allclose(got, want, atol=1e-5)


def test_temperature_divides_the_student_logits():
    z = torch.tensor([[3.0, 1.0, -2.0, 0.5]])
    ids, t = torch.tensor([[1, 0]]), torch.tensor([[-0.4, -1.5]])
    assert kd_divergence(z, ids, t, 0.0, temperature=2.0).item() == pytest.approx(
        kd_divergence(z / 2, ids, t, 0.0).item(), rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_gradients_match_finite_differences(beta):
    torch.manual_seed(1)
    logits = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 3, -1], [6, 5, 4], [2, -1, -1], [1, 0, 2]])
    teacher = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.2], [0.9, 0.05, 0.01], [0.4, 0.35, 0.2]],
                           dtype=torch.float64).log()
    assert torch.autograd.gradcheck(lambda z: kd_divergence(z, ids, teacher, beta, 1.5), (logits,))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_exact_and_finite_as_the_students_rest_mass_vanishes(beta):
    # the student puts e^-1000 on the tokens outside the top-k: 1 - sum(q_top) is 0 in any float, its log is not
    logits = torch.tensor([[0.0, -0.7, -1000.0, -1001.0]], dtype=torch.float32, requires_grad=True)
    ids, teacher = torch.tensor([[0, 1]]), torch.tensor([[math.log(0.5), math.log(0.3)]])
    log_p, log_q, valid = topk_partition(logits, ids, teacher)
    exact_log_q_rest = (torch.logsumexp(logits[0, 2:].double(), 0) - torch.logsumexp(logits[0].double(), 0)).item()
    assert log_q[0, 2].item() == pytest.approx(exact_log_q_rest, rel=1e-6) and bool(valid.all())
    loss = kd_divergence(logits, ids, teacher, beta)
    loss.backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    if beta == 0.0:  # forward KL: the rest term 0.2 (log 0.2 − log q_rest) dominates, ≈ 200
        assert loss.item() == pytest.approx(kl([0.5, 0.3], softmax([0.0, -0.7]))
                                            + 0.5 * math.log(0.5 / 0.5) + 0.2 * (math.log(0.2) - exact_log_q_rest),
                                            rel=1e-3)


def test_a_teacher_top_k_holding_all_its_mass_keeps_reverse_kl_finite():
    # the stored top-1 holds all the teacher's mass (log p = 0 to fp32): p_rest is floored, the student's rest counts
    teacher = torch.tensor([[0.0]])
    logits = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    log_p, _, _ = topk_partition(logits, torch.tensor([[0]]), teacher)
    assert log_p[0, 1].item() == pytest.approx(math.log(REST_FLOOR))
    loss = kd_divergence(logits, torch.tensor([[0]]), teacher, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_log1mexp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-10, -0.1, -0.7, -5.0, -50.0], dtype=torch.float64)
    assert torch.allclose(log1mexp(x), torch.log(1 - torch.exp(x.double())), rtol=1e-6)
    assert log1mexp(torch.tensor(0.0)).item() == float("-inf")


def test_generalized_jsd_refuses_beta_outside_the_unit_interval():
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), 1.5)


def test_kd_ntp_loss_distils_the_answer_and_keeps_the_latents_cross_entropy():
    torch.manual_seed(2)
    logits = torch.randn(5, 6)
    targets = torch.tensor([4, 5, 1, 2, 0])  # two latent tokens (ids 4, 5), then three answer tokens
    answer = torch.tensor([False, False, True, True, True])
    ids = torch.tensor([[1, 3], [2, -1], [0, 1]])
    teacher = torch.tensor([[0.7, 0.2], [0.6, 0.3], [0.9, 0.05]]).log()
    kd = KdObjective(beta=0.0, temperature=1.0, ce_weight=0.5)
    loss, divergence, ce = kd_ntp_loss(logits, targets, answer, ids, teacher, kd)
    per_ce = F.cross_entropy(logits, targets, reduction="none")
    per_d = kd_divergence(logits[answer], ids, teacher, 0.0)
    assert loss.item() == pytest.approx(((per_ce[:2].sum() + (per_d + 0.5 * per_ce[2:]).sum()) / 5).item(), rel=1e-6)
    assert divergence.item() == pytest.approx(per_d.mean().item()) and ce.item() == pytest.approx(per_ce.mean().item())
    with pytest.raises(ValueError, match="not aligned with the labels"):
        kd_ntp_loss(logits, targets, answer, ids[:2], teacher[:2], kd)

"""ConStyle losses against their closed forms (written out element by element)."""
import math

import pytest
import torch

from irtoolkit.utils.registry import build_loss


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize('normalize', [False, True])
def test_infonce_closed_form(normalize):
    q, k, queue = _rand(3, 5, seed=1), _rand(3, 5, seed=2), _rand(5, 7, seed=3)
    t = 0.5
    loss = build_loss({'type': 'QueueInfoNCELoss', 'normalize': normalize, 'loss_weight': 2.0})(q, k, queue, t)

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v] if normalize else v

    expected = 0.
    for i in range(3):
        qi, ki = unit(q[i].tolist()), unit(k[i].tolist())
        pos = sum(a * b for a, b in zip(qi, ki)) / t
        negs = [sum(a * b for a, b in zip(qi, unit(queue[:, j].tolist()))) / t for j in range(7)]
        expected += -pos + math.log(math.exp(pos) + sum(math.exp(n) for n in negs))
    assert loss.item() == pytest.approx(2.0 * expected / 3, rel=1e-9)


def test_infonce_temperature_option_wins_and_is_checked():
    q, k, queue = _rand(2, 4), _rand(2, 4, seed=5), _rand(4, 3, seed=6)
    fixed = build_loss({'type': 'QueueInfoNCELoss', 'temperature': 0.1})
    assert fixed(q, k, queue, 0.9).item() == pytest.approx(fixed(q, k, queue, 0.1).item())
    with pytest.raises(ValueError, match='temperature'):
        build_loss({'type': 'QueueInfoNCELoss'})(q, k, queue)


def test_infonce_falls_when_query_moves_to_key():
    k, queue = _rand(4, 8, seed=1), _rand(8, 16, seed=2)
    fn = build_loss({'type': 'QueueInfoNCELoss', 'normalize': True})
    far, near = fn(_rand(4, 8, seed=3), k, queue, 0.07), fn(k.clone(), k, queue, 0.07)
    assert near < far


def test_content_closed_form():
    q, k = _rand(3, 4, seed=1), _rand(3, 4, seed=2)
    plain = build_loss({'type': 'ContentLoss', 'loss_weight': 0.5})(q, k).item()
    assert plain == pytest.approx(0.5 * sum((a - b) ** 2 for a, b in zip(q.flatten().tolist(), k.flatten().tolist()))
                                  / 12, rel=1e-12)
    normed = build_loss({'type': 'ContentLoss', 'normalize': True})(q, k).item()
    cos = torch.nn.functional.cosine_similarity(q, k, dim=1)
    assert normed == pytest.approx(float((2 - 2 * cos).mean() / 4), rel=1e-9)


def _gram(x, div):
    b = len(x)
    return [[sum(x[i][c] * x[j][c] for c in range(len(x[i]))) / div for j in range(b)] for i in range(b)]


def test_style_neg_mse_closed_form():
    a = [_rand(3, 4, seed=1), _rand(3, 4, seed=2)]
    b = [_rand(3, 4, seed=3), _rand(3, 4, seed=4)]
    loss = build_loss({'type': 'StyleLoss'})(a, b).item()
    expected = 0.
    for x, y in zip(a, b):
        gx, gy = _gram(x.tolist(), 12), _gram(y.tolist(), 12)
        expected -= sum((gx[i][j] - gy[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert loss == pytest.approx(expected, rel=1e-9)


def test_style_bounded_closed_form_and_bound():
    a, b = [_rand(3, 4, seed=1)], [_rand(3, 4, seed=2)]
    fn = build_loss({'type': 'StyleLoss', 'mode': 'bounded'})

    def unit_rows(x):
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x.tolist()]

    gx, gy = _gram(unit_rows(a[0]), 1), _gram(unit_rows(b[0]), 1)
    expected = -0.25 * sum((gx[i][j] - gy[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert fn(a, b).item() == pytest.approx(expected, rel=1e-9)
    # inflating the latents cannot lower the bounded loss, but lowers upstream's without limit
    big = [a[0] * 1e3]
    assert fn(big, b).item() == pytest.approx(fn(a, b).item(), rel=1e-9)
    neg = build_loss({'type': 'StyleLoss'})
    assert neg(big, b).item() < 1e3 * neg(a, b).item()
    worst = fn([torch.tensor([[1., 0.], [1., 0.]])], [torch.tensor([[1., 0.], [-1., 0.]])])
    assert worst.item() >= -1.0


def test_style_gradient_only_to_current_latents():
    a = [_rand(2, 4, seed=1).requires_grad_()]
    b = [_rand(2, 4, seed=2).requires_grad_()]
    build_loss({'type': 'StyleLoss'})(a, b).backward()
    assert a[0].grad is not None and b[0].grad is None
    with pytest.raises(ValueError, match='mode'):
        build_loss({'type': 'StyleLoss', 'mode': 'mse'})


def test_label_cross_entropy_closed_form():
    logits, labels = _rand(3, 4, seed=7), torch.tensor([0, 3, 1])
    loss = build_loss({'type': 'LabelCrossEntropyLoss', 'loss_weight': 0.5})(logits, labels).item()
    expected = sum(math.log(sum(math.exp(v) for v in row)) - row[lab] for row, lab in zip(logits.tolist(), [0, 3, 1]))
    assert loss == pytest.approx(0.5 * expected / 3, rel=1e-9)


def test_cyclic_cosine_schedule():
    from irtoolkit.utils.optim import build_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = build_scheduler(opt, {'type': 'CosineAnnealingRestartCyclicLR', 'periods': [4, 8],
                                  'restart_weights': [1, 1], 'eta_mins': [3e-4, 1e-6]})
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([3e-4] * 5)  # constant first period (upstream's 243,312 iterations)
    t = 6  # inside the second period, which starts after iteration 4
    assert lrs[t] == pytest.approx(1e-6 + 0.5 * (3e-4 - 1e-6) * (1 + math.cos(math.pi * (t - 4) / 8)))
    assert lrs[12] == pytest.approx(1e-6) and lrs[13] == pytest.approx(1e-6)

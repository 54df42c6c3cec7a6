"""Each contrastive loss against its closed form on constructed inputs, and which inputs get gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from irtoolkit.utils.registry import LOSS_REGISTRY

TAU = 0.5  # a moderate temperature keeps the closed forms O(1), well inside float32 precision


def show(name, value, expected):
    """Visible with ``pytest -s``: the figures quoted in the closing note."""
    print(f'\n{name}: loss {float(value):.6f}, closed form {expected:.6f}')


def basis(n, d):
    """n orthonormal vectors in R^d (rows of the identity)."""
    return torch.eye(d)[:n]


def test_patchnce_internal_closed_form():
    p, d = 6, 8
    q = basis(p, d)[None].repeat(2, 1, 1)  # q = k, patches mutually orthogonal
    loss = LOSS_REGISTRY.get('PatchNCELoss')(temperature=TAU)(q, q.clone())
    expected = -math.log(math.exp(1 / TAU) / (math.exp(1 / TAU) + (p - 1)))
    show('PatchNCE internal (P=6, q=k orthonormal)', loss, expected)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # batch scope: the B*P - 1 other patches of the whole batch are negatives
    q2 = basis(2 * p, 2 * p).reshape(2, p, 2 * p)
    loss_b = LOSS_REGISTRY.get('PatchNCELoss')(temperature=TAU, neg_scope='batch')(q2, q2.clone())
    expected_b = -math.log(math.exp(1 / TAU) / (math.exp(1 / TAU) + (2 * p - 1)))
    show('PatchNCE internal, batch scope (B=2, P=6)', loss_b, expected_b)
    assert loss_b.item() == pytest.approx(expected_b, rel=1e-5)


def test_patchnce_external_and_both_closed_form():
    p, k, d, c = 4, 5, 16, 0.3
    q = basis(p, d)[None]
    # every negative has cosine c with every query: c * normalised sum of the query basis + orthogonal rest
    u = F.normalize(basis(p, d).sum(0), dim=0)
    w = torch.zeros(d)
    w[-1] = 1
    neg = (c * math.sqrt(p) * u + math.sqrt(1 - c * c * p) * w)[None, None].repeat(1, k, 1)
    assert torch.allclose(q @ neg[0, 0], torch.full((p,), c))
    loss = LOSS_REGISTRY.get('PatchNCELoss')(temperature=TAU, neg_mode='external')(q, q.clone(), neg)
    e1 = math.exp(1 / TAU)
    show('PatchNCE external (K=5, cos 0.3)', loss, -math.log(e1 / (e1 + k * math.exp(c / TAU))))
    assert loss.item() == pytest.approx(-math.log(e1 / (e1 + k * math.exp(c / TAU))), rel=1e-5)
    both = LOSS_REGISTRY.get('PatchNCELoss')(temperature=TAU, neg_mode='both', loss_weight=2.0)(q, q.clone(), neg)
    assert both.item() == pytest.approx(-2 * math.log(e1 / (e1 + (p - 1) + k * math.exp(c / TAU))), rel=1e-5)


def test_patchnce_keys_detached():
    q = F.normalize(torch.randn(2, 8, 16), dim=-1).requires_grad_(True)
    k = F.normalize(torch.randn(2, 8, 16), dim=-1).requires_grad_(True)
    LOSS_REGISTRY.get('PatchNCELoss')()(q, k).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


def test_supcon_closed_form_and_swapped_labels():
    p, qn, d = 3, 5, 4
    u, v = torch.eye(d)[0], torch.eye(d)[1]
    bg, rain = u.repeat(1, p, 1), v.repeat(1, qn, 1)
    loss = LOSS_REGISTRY.get('SupConPatchLoss')(temperature=TAU, base_temperature=TAU)(bg, rain)
    e1 = math.exp(1 / TAU)
    l_bg = -math.log(e1 / ((p - 1) * e1 + qn))
    l_rain = -math.log(e1 / ((qn - 1) * e1 + p))
    expected = (p * l_bg + qn * l_rain) / (p + qn)
    show('SupCon (3 bg, 5 rain, separated)', loss, expected)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    mixed = torch.stack([u, v, u])[None]  # same-label samples now point in different directions
    bad = LOSS_REGISTRY.get('SupConPatchLoss')(TAU, TAU)(mixed, torch.stack([v, u, v, u, v])[None])
    assert bad.item() > loss.item() + 1  # swapped labels: far from the minimum


def test_adversarial_contrastive_roles():
    p, k, d = 4, 6, 8
    q = basis(p, d)[None].requires_grad_(True)
    kk = basis(p, d)[None].clone().requires_grad_(True)
    half = k // 2
    neg = torch.cat([torch.eye(d)[-1].repeat(half, 1), torch.eye(d)[-2].repeat(half, 1)])[None].requires_grad_(True)
    loss_fn = LOSS_REGISTRY.get('AdversarialContrastiveLoss')(temperature=TAU, lambda_div=0.5)
    e1 = math.exp(1 / TAU)
    nce = -math.log(e1 / (e1 + k))  # negatives orthogonal to every query
    g = loss_fn([q], [kk], [neg], role='generator')
    show('AdversarialContrastive, generator role', g, nce)
    assert g.item() == pytest.approx(nce, rel=1e-5)
    g.backward()
    assert q.grad is not None and kk.grad is None and neg.grad is None  # negatives detached in the G step
    q.grad = None
    div = 2 / d  # |e_{d-1} - e_{d-2}| averaged over d entries
    n = loss_fn([q], [kk], [neg], role='negative')
    show('AdversarialContrastive, negative role', n, -nce - 0.5 * div)
    assert n.item() == pytest.approx(-nce - 0.5 * div, rel=1e-5)
    n.backward()
    assert q.grad is None and kk.grad is None and neg.grad is not None  # only the negatives learn here


def test_nonlocal_contrastive_closed_form():
    p, d = 5, 8
    q = basis(p, d)[None]
    u, v = torch.eye(d)[0], torch.eye(d)[1]
    bg, rain = u.repeat(1, 2, 1), v.repeat(1, 3, 1)
    fn = LOSS_REGISTRY.get('NonLocalContrastiveLoss')(TAU, TAU, TAU, lambda_location=2.0,
                                                      lambda_layer=0.5)
    total, terms = fn([q], [q.clone()], [bg], [rain])
    e1 = math.exp(1 / TAU)
    loc = -math.log(e1 / (e1 + p - 1))
    layer = (2 * -math.log(e1 / (e1 + 3)) + 3 * -math.log(e1 / (2 * e1 + 2))) / 5
    assert terms['location'].item() == pytest.approx(loc, rel=1e-5)
    assert terms['layer'].item() == pytest.approx(layer, rel=1e-5)
    show('NonLocalContrastive total (2 loc + 0.5 layer)', total, 2 * loc + 0.5 * layer)
    assert total.item() == pytest.approx(2 * loc + 0.5 * layer, rel=1e-5)
    # identity pair averaged in: an identity pair with q_idt == -k_idt per patch is much worse
    total_idt, terms_idt = fn([q], [q.clone()], [bg], [rain], [q], [-q])
    assert terms_idt['location'].item() > loc


def test_multi_grained_closed_form():
    fn = LOSS_REGISTRY.get('MultiGrainedContrastiveLoss')(feature_mode='ratio', image_mode='ratio',
                                                          feature_weight=1.0, image_weight=2.0)
    a = torch.zeros(2, 4, 8)
    img_a = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 2, 2)]
    total, terms = fn({'feat': [a], 'img': img_a},
                      {'feat': [a + 0.1], 'img': [x + 0.2 for x in img_a]},
                      {'feat': [a + 0.4], 'img': [x + 0.8 for x in img_a]})
    assert terms['feature'].item() == pytest.approx(0.25, rel=1e-4)
    assert terms['image'].item() == pytest.approx(0.25, rel=1e-4)  # equal layer weights 1/2 each
    show('MultiGrained ratio/ratio total', total, 0.25 + 2 * 0.25)
    assert total.item() == pytest.approx(0.25 + 2 * 0.25, rel=1e-4)
    info = LOSS_REGISTRY.get('MultiGrainedContrastiveLoss')(feature_mode='infonce', image_mode='none',
                                                            temperature=TAU)
    q = basis(3, 8)[None]
    neg = torch.eye(8)[-1].repeat(1, 4, 1)
    total, terms = info({'feat': [q]}, {'feat': [q.clone()]}, {'feat': [neg]})
    e1 = math.exp(1 / TAU)
    show('MultiGrained feature InfoNCE', terms['feature'], -math.log(e1 / (e1 + 2 + 4)))
    assert terms['feature'].item() == pytest.approx(-math.log(e1 / (e1 + 2 + 4)), rel=1e-5)
    _, terms = info({'feat': [q]}, {'feat': [q.clone()]}, {'feat': [None]})  # no external negatives: other patches
    assert terms['feature'].item() == pytest.approx(-math.log(e1 / (e1 + 2)), rel=1e-5)


def test_cluster_grained_closed_form():
    u, v = torch.eye(4)[0], torch.eye(4)[1]
    anchors = u[None].repeat(3, 1).requires_grad_(True)
    pos = torch.stack([u, u]).requires_grad_(True)
    neg = v[None]
    loss = LOSS_REGISTRY.get('ClusterGrainedContrastiveLoss')(temperature=0.1)(anchors, pos, neg)
    e = math.exp(10)
    show('ClusterGrained (2 positives, 1 negative, tau 0.1)', loss, -math.log(e / (2 * e + 1)))
    assert loss.item() == pytest.approx(-math.log(e / (2 * e + 1)), rel=1e-5)
    loss.backward()
    assert pos.grad is None and anchors.grad is not None

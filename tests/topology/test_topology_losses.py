"""clDice and Skeleton Recall losses: float64 loops from the formulas, MONAI side by side, the
topology they reward, pluggable skeletons, the skeleton context and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import default_collate

from lightning_losses import build_loss
from lightning_losses.losses.topology import ClDiceLoss, SkeletonRecallLoss
from lightning_losses.topology import SimplePointSkeletonizer, SkeletonTransform

from .shapes import hline

monai_cldice = pytest.importorskip("monai.losses.cldice")


def _scipy_soft_skeleton(x: np.ndarray, k: int) -> np.ndarray:
    """The clDice skeleton recurrence with SciPy's grey morphology, one (spatial) image."""
    cross = ndimage.generate_binary_structure(x.ndim, 1)

    def erode(a):
        return ndimage.grey_erosion(a, footprint=cross, mode="nearest")

    def opened(a):
        return ndimage.grey_dilation(erode(a), size=(3,) * a.ndim, mode="nearest")

    skel = np.maximum(x - opened(x), 0)
    for _ in range(k):
        x = erode(x)
        delta = np.maximum(x - opened(x), 0)
        skel = skel + np.maximum(delta - skel * delta, 0)
    return skel


def _naive_cldice_loss(logits, target, alpha=0.5, k=3, s=1.0, background=True):
    """Per image: softmax, one-hot, then for each foreground class the paper's sums as loops."""
    probs = torch.softmax(logits.double(), 1).numpy()
    n, c = probs.shape[:2]
    out = []
    for i in range(n):
        terms = []
        for cls in range(1 if background else 0, c):
            p = probs[i, cls]
            g = (target[i].numpy() == cls).astype(np.float64)
            sp, sg = _scipy_soft_skeleton(p, k), _scipy_soft_skeleton(g, k)
            sums = dict(pg=0.0, p=0.0, g=0.0, spg=0.0, sp=0.0, sgp=0.0, sg=0.0)
            for idx in np.ndindex(p.shape):
                sums["pg"] += p[idx] * g[idx]
                sums["p"] += p[idx]
                sums["g"] += g[idx]
                sums["spg"] += sp[idx] * g[idx]
                sums["sp"] += sp[idx]
                sums["sgp"] += sg[idx] * p[idx]
                sums["sg"] += sg[idx]
            dice = (2 * sums["pg"] + s) / (sums["p"] + sums["g"] + s)
            t_prec = (sums["spg"] + s) / (sums["sp"] + s)
            t_sens = (sums["sgp"] + s) / (sums["sg"] + s)
            cl = 2 * t_prec * t_sens / (t_prec + t_sens)
            terms.append((1 - alpha) * (1 - dice) + alpha * (1 - cl))
        out.append(np.mean(terms))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("spatial", [(10, 9), (5, 6, 7)])
def test_cldice_equals_a_float64_loop_from_the_formula(spatial):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, *spatial, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 3, (3, *spatial), generator=g)
    for alpha, k in ((0.5, 3), (0.3, 1)):
        loss = ClDiceLoss(alpha=alpha, num_iter=k, reduction="none")
        torch.testing.assert_close(
            loss(logits, target), _naive_cldice_loss(logits, target, alpha, k), rtol=1e-12, atol=0
        )


def _monai_pair(**kwargs):
    return monai_cldice.SoftDiceclDiceLoss(
        iter_=3, alpha=0.5, smooth_nr=1.0, smooth_dr=1.0, smooth=1e-12, **kwargs
    )


@pytest.mark.parametrize("spatial", [(12, 11), (6, 7, 8)])
def test_cldice_equals_monai_with_one_foreground_channel(spatial):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, *spatial, generator=g, dtype=torch.float64).requires_grad_(True)
    target = torch.randint(0, 2, (4, 1, *spatial), generator=g).double()
    ours = ClDiceLoss(mode="binary")(logits, target)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    theirs = _monai_pair(sigmoid=True)(logits, target)
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-8, atol=1e-12)
    # Two-class softmax without the background channel: the same single foreground channel.
    logits2 = torch.randn(4, 2, *spatial, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (4, *spatial), generator=g)
    torch.testing.assert_close(
        ClDiceLoss()(logits2, labels),
        _monai_pair(softmax=True, to_onehot_y=True, include_background=False)(
            logits2, labels[:, None]
        ),
        rtol=1e-10,
        atol=1e-12,
    )


def test_cldice_with_several_classes_is_a_class_mean_where_monai_pools_channels():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 12, 12, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 12, 12), generator=g)
    onehot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).double()
    ours = ClDiceLoss(mode="multilabel", from_logits=False, include_background=False)
    probs = torch.softmax(logits, 1)
    per_class = [
        ClDiceLoss(mode="binary", from_logits=False)(probs[:, c : c + 1], onehot[:, c : c + 1])
        for c in (1, 2, 3)
    ]
    torch.testing.assert_close(ours(probs, onehot), torch.stack(per_class).mean())
    monai = _monai_pair(include_background=False)(probs, onehot)
    dice_part = (
        0.5
        * torch.stack(
            [
                build_loss("dice", mode="binary", from_logits=False, smooth_nr=1.0, smooth_dr=1.0)(
                    probs[:, c : c + 1], onehot[:, c : c + 1]
                )
                for c in (1, 2, 3)
            ]
        ).mean()
    )
    assert not torch.allclose(monai, ours(probs, onehot), rtol=1e-3)
    # MONAI's Dice half agrees; the clDice half pools the three channels into one ratio.
    cl_ours = ours(probs, onehot) - dice_part
    assert not torch.allclose(monai - dice_part, cl_ours, rtol=1e-3)


def _bar_probs(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(mask, dtype=torch.float64)[None, None]


def test_a_gap_costs_more_clDice_than_the_same_pixels_lost_at_the_border():
    target = hline(size=32, row=16, width=3, start=4, stop=28)
    gap = target.copy()
    gap[15:18, 15:17] = False  # 6 pixels: the line is cut
    thinner = target.copy()
    thinner[15, 4:10] = False  # 6 pixels of the upper edge: still connected
    dice = build_loss("dice", mode="binary", from_logits=False, smooth_nr=1.0, smooth_dr=1.0)
    cl_only = ClDiceLoss(mode="binary", from_logits=False, alpha=1.0)
    t = _bar_probs(target)
    torch.testing.assert_close(dice(_bar_probs(gap), t), dice(_bar_probs(thinner), t))
    assert cl_only(_bar_probs(gap), t) > cl_only(_bar_probs(thinner), t) + 0.02
    assert cl_only(t, t) < 1e-12


def test_num_iter_is_honoured_and_the_skeletonizer_is_pluggable():
    thick = np.zeros((1, 24, 24), bool)
    thick[0, 4:20, 6:18] = True  # half-width 6: three iterations are not enough
    target = torch.from_numpy(thick).long()
    logits = torch.randn(1, 1, 24, 24, generator=torch.Generator().manual_seed(3))
    values = {k: ClDiceLoss(mode="binary", num_iter=k)(logits, target) for k in (1, 3, 8)}
    assert len({round(float(v), 12) for v in values.values()}) == 3
    simple = ClDiceLoss(
        mode="binary", skeletonizer=SimplePointSkeletonizer(num_iter=10, probabilistic=False)
    )
    x = logits.clone().requires_grad_(True)
    simple(x, target).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    calls = []
    custom = ClDiceLoss(mode="binary", skeletonizer=lambda p: calls.append(p.shape) or p)
    custom(logits, target)
    assert calls == [(1, 1, 24, 24)] * 2
    with pytest.raises(TypeError, match="skeletonizer"):
        ClDiceLoss(skeletonizer=3)


def test_background_is_left_out_by_default_in_multiclass_mode_only():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 10, 10, generator=g)
    labels = torch.randint(0, 3, (2, 10, 10), generator=g)
    torch.testing.assert_close(
        ClDiceLoss()(logits, labels), ClDiceLoss(include_background=False)(logits, labels)
    )
    assert not torch.allclose(
        ClDiceLoss()(logits, labels), ClDiceLoss(include_background=True)(logits, labels)
    )
    assert ClDiceLoss(mode="binary").include_background
    assert ClDiceLoss(mode="multilabel").include_background


def _naive_skeleton_recall(logits, tube, eps=1e-5):
    probs = torch.softmax(logits.double(), 1).numpy()
    out = []
    for i in range(probs.shape[0]):
        terms = []
        for c in range(1, probs.shape[1]):
            hit = total = 0.0
            for idx in np.ndindex(probs.shape[2:]):
                on = float(tube[i][idx] == c)
                hit += probs[i, c][idx] * on
                total += on
            terms.append(1 - (hit + eps) / (total + eps))
        out.append(np.mean(terms))
    return torch.tensor(out, dtype=torch.float64)


def test_skeleton_recall_from_the_transform_equals_a_float64_loop():
    masks = []
    for w in (3, 5, 7):
        m = np.zeros((24, 24), np.int64)
        m[hline(size=24, row=8, width=w, start=2, stop=22)] = 1
        m[14:21, 3:21] = 2
        masks.append(torch.from_numpy(m))
    transform = SkeletonTransform()
    batch = default_collate([transform({"mask": m}) for m in masks])
    logits = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(5)).double()
    loss = SkeletonRecallLoss(reduction="none")
    out = loss(logits, batch["mask"], skeleton=batch["skeleton"])
    torch.testing.assert_close(
        out, _naive_skeleton_recall(logits, batch["skeleton"]), rtol=1e-12, atol=0
    )
    perfect = torch.nn.functional.one_hot(batch["mask"], 3).permute(0, 3, 1, 2) * 50.0
    assert loss(perfect.double(), batch["mask"], skeleton=batch["skeleton"]).max() < 1e-12


def test_skeleton_recall_three_dimensional_and_one_hot_layouts():
    vol = torch.zeros(2, 1, 8, 10, 12)
    vol[:, :, 2:7, 3:8, 1:11] = 1  # an odd cross-section: 3-D thinning keeps its axis
    tube = SkeletonTransform(mode="multilabel", background=None)({"mask": vol[0]})["skeleton"]
    tube = tube.expand(2, *tube.shape).float()
    logits = torch.randn(2, 1, 8, 10, 12, requires_grad=True)
    value = SkeletonRecallLoss(mode="multilabel")(logits, vol, skeleton=tube)
    value.backward()
    assert value > 0 and torch.isfinite(logits.grad).all()
    # Gradient only where the tube is.
    assert (logits.grad[tube == 0] == 0).all() and (logits.grad[tube == 1] < 0).all()


def test_skeleton_recall_context_errors_are_named():
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    loss = SkeletonRecallLoss()
    with pytest.raises(TypeError, match="skeleton"):
        loss(logits, target)
    with pytest.raises(ValueError, match="`skeleton` must have the target's shape"):
        loss(logits, target, skeleton=target[:, :4])
    with pytest.raises(ValueError, match="2-D or 3-D"):
        loss(torch.randn(2, 3, 8), target[:, 0], skeleton=target[:, 0])
    with pytest.raises(ValueError, match="alpha"):
        ClDiceLoss(alpha=1.5)
    assert build_loss("skeleton_recall").context == ("skeleton",)


@pytest.mark.parametrize("cls", [ClDiceLoss, SkeletonRecallLoss])
def test_batch_reduction_and_fully_ignored_images(cls):
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 3, 12, 12, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 12, 12), generator=g)
    ctx = {"skeleton": labels} if cls is SkeletonRecallLoss else {}
    smooth = {"smooth": 0.0} if cls is ClDiceLoss else {"eps": 1e-12}
    # Without smoothing (eps negligible) every term is a ratio of sums, so a batch of two
    # copies of one image gives that image's value under reduce_over="batch".
    twice = {k: v.expand(2, *v.shape[1:]) for k, v in ctx.items()}
    batch = cls(reduce_over="batch", reduction="none", **smooth)(
        logits.expand(2, -1, -1, -1), labels.expand(2, -1, -1), **twice
    )
    image = cls(reduction="none", **smooth)(logits, labels, **ctx)
    torch.testing.assert_close(batch, image.expand(2))
    # An image whose pixels are all ignored leaves the mean's denominator.
    ignored = torch.full_like(labels, 255)
    both = cls(ignore_index=255)(
        torch.cat([logits, logits]),
        torch.cat([labels, ignored]),
        **{k: torch.cat([v, torch.zeros_like(v)]) for k, v in ctx.items()},
    )
    torch.testing.assert_close(both, cls(ignore_index=255)(logits, labels, **ctx))

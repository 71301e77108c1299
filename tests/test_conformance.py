"""Every registered loss against the shared contract (docs/guide.md, "The loss contract").

Parametrised over the registry, so a loss added to it is checked without writing a test.
Tolerances: the bf16 check compares the loss on bf16 logits, computed under autocast, with the
float64 loss on the same (bf16-rounded) logits at rtol 1e-4 (losses compute in float32 from
low-precision logits); against the unrounded float64 logits the gap is bf16's own rounding, so
that comparison uses rtol 5e-2.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lightning_losses.registry as registry
from lightning_losses import build_loss, list_losses, loss_info
from lightning_losses.losses import ClassCountsLoss, Loss

from .conftest import loss_context as call_context
from .conftest import loss_inputs as label_inputs
from .conftest import ready_loss, required_args

FAMILIES = registry.FAMILIES
NAMES = list_losses()
#: Input kinds besides logits, and the target kind of losses that do not read the target.
INPUT_KINDS = ("logits", "features", "scores", "predictions", "embeddings")
TARGET_KINDS = ("index", "multilabel", "none", "labels", "regression")
#: The input kinds each family may declare.
FAMILY_INPUTS = {
    "distillation": INPUT_KINDS,
    "metric": ("embeddings",),
    "diffusion": ("predictions",),
}
#: Losses whose teacher keyword stacks several teachers first, (M, *input.shape).
STACKED_TEACHERS = {"multi_teacher_kd": 3}


def loss_inputs(name: str, n: int = 8, k: int = 5, *, dense: tuple[int, ...] = (), **kwargs):
    """conftest's inputs, plus a spatial dim for losses that need one and a batch-aligned
    label vector (unused) for losses whose target kind is "none"."""
    info = loss_info(name)
    dense = (
        dense
        or getattr(info.cls, "conformance_spatial", ())  # a loss that needs larger images
        or (3, 2)[: getattr(info.cls, "min_spatial_dims", 0)]
    )
    if info.target != "none":
        return label_inputs(name, n, k, dense=dense, **kwargs)
    g = torch.Generator().manual_seed(kwargs.get("seed", 0))
    x = torch.randn(n, k, *dense, generator=g, dtype=torch.float64) * kwargs.get("scale", 3.0)
    return x.to(kwargs.get("dtype", torch.float32)), torch.randint(0, k, (n,), generator=g)


def teacher_like(like: torch.Tensor, offset: float) -> torch.Tensor:
    """A fixed float32 tensor of ``like``'s shape whose row i depends on i only (so slicing the
    batch slices it, as the per-sample test needs)."""
    n = like.shape[0]
    i = torch.arange(n, dtype=torch.float64).reshape(n, *[1] * (like.ndim - 1))
    j = torch.arange(like.shape[1:].numel(), dtype=torch.float64).reshape(1, *like.shape[1:])
    return (2.5 * torch.sin(1.3 * i + 0.7 * j + offset)).float()


def loss_context(name: str, epoch: int = 0, *, n: int = 8, like: torch.Tensor) -> dict:
    """conftest's call context plus the teacher keywords (``teacher_keys``) of distillation
    losses, shaped like the student's ``like``."""
    ctx = call_context(name, epoch, n=n, like=like)
    info = loss_info(name)
    if "teacher" in info.context:
        m = STACKED_TEACHERS.get(name)
        for offset, key in enumerate(info.cls.teacher_keys):
            if m is None:
                ctx[key] = teacher_like(like, offset)
            else:
                ctx[key] = torch.stack([teacher_like(like, offset + 0.5 * t) for t in range(m)])
    return ctx


#: A subset compiled with torch.compile in CI (compilation costs ~10 s per loss on 2 cores).
COMPILE_SUBSET = [
    n for n in ("cross_entropy", "focal", "binary_focal", "ldam", "asl") if n in NAMES
]


def test_registry_has_at_least_25_losses():
    assert len(NAMES) >= 25, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_docstring(name):
    info = loss_info(name)
    assert info.family in FAMILIES
    assert issubclass(info.cls, Loss)
    assert info.paper.strip(), "every loss names its reference"
    assert ".. math::" in info.doc or ":math:" in info.doc, "the docstring must carry the formula"
    assert info.input in INPUT_KINDS and info.target in TARGET_KINDS
    assert info.input in FAMILY_INPUTS.get(info.family, ("logits",))
    assert info.target != "none" or "teacher" in info.context
    build_loss(name, **required_args(name))  # every default constructs (sizes aside)


@pytest.mark.parametrize("name", NAMES)
def test_none_is_per_sample_and_mean_matches(name):
    """``"none"`` then ``.mean()`` / ``.sum()`` equals ``"mean"`` / ``"sum"``: exactly on the
    per-sample path (with ``sample_weight``), and up to the order of the floating-point summation
    where a fused kernel reduces (float64 here, so to about 1e-15 relative)."""
    x, y = loss_inputs(name, n=7, k=5, dtype=torch.float64)
    ctx = loss_context(name, n=7, like=x)
    none = ready_loss(name, reduction="none")(x, y, **ctx)
    assert none.shape == (7,)
    exact = dict(rtol=1e-14, atol=1e-15)
    mean = ready_loss(name, reduction="mean")(x, y, **ctx)
    total = ready_loss(name, reduction="sum")(x, y, **ctx)
    torch.testing.assert_close(none.mean(), mean, **exact)
    torch.testing.assert_close(none.sum(), total, **exact)
    ones = torch.ones(7, dtype=torch.float64)
    weighted = ready_loss(name, reduction="mean")(x, y, sample_weight=ones, **ctx)
    assert torch.equal(none.mean(), weighted)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    n=st.integers(1, 9),
    k=st.integers(2, 7),
    scale=st.floats(0.1, 20.0),
    seed=st.integers(0, 10_000),
)
def test_reduction_consistency_property(name, n, k, scale, seed):
    x, y = loss_inputs(name, n=n, k=k, scale=scale, seed=seed, dtype=torch.float64)
    ctx = loss_context(name, n=n, like=x)
    none = ready_loss(name, num_classes=k, reduction="none")(x, y, **ctx)
    mean = ready_loss(name, num_classes=k, reduction="mean")(x, y, **ctx)
    assert none.shape == (n,) and torch.isfinite(none).all()
    torch.testing.assert_close(none.mean(), mean, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_sample_weight_semantics(name):
    x, y = loss_inputs(name, n=6, k=5, dtype=torch.float64)
    ctx = loss_context(name, n=6, like=x)
    loss_none = ready_loss(name, reduction="none")
    loss_mean = ready_loss(name, reduction="mean")
    per_sample = loss_none(x, y, **ctx)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    # mean = sum(w * l) / N; weights do not enter the denominator
    torch.testing.assert_close(loss_mean(x, y, sample_weight=w, **ctx), (w * per_sample).sum() / 6)
    torch.testing.assert_close(loss_none(x, y, sample_weight=w, **ctx), w * per_sample)
    ones = torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(
        loss_mean(x, y, sample_weight=ones, **ctx), loss_mean(x, y, **ctx), rtol=1e-14, atol=0
    )
    with pytest.raises(ValueError, match="sample_weight"):
        loss_mean(x, y, sample_weight=torch.ones(5), **ctx)


@pytest.mark.parametrize("name", [n for n in NAMES if not loss_info(n).cls.batch_statistic])
def test_per_sample_values_do_not_depend_on_the_rest_of_the_batch(name):
    """A sample's value is its own (losses with a documented batch statistic are checked in
    their family tests)."""
    x, y = loss_inputs(name, n=6, k=5, dtype=torch.float64)
    loss = ready_loss(name, reduction="none")
    torch.testing.assert_close(
        loss(x, y, **loss_context(name, n=6, like=x))[:3],
        loss(x[:3], y[:3], **loss_context(name, n=3, like=x[:3])),
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sign_seed", [0, 1])
def test_finite_values_and_gradients_at_saturated_logits(name, sign_seed):
    x, y = loss_inputs(name, n=6, k=5, seed=sign_seed)
    x = (torch.sign(x) * 100.0).requires_grad_(True)
    loss = ready_loss(name)(x, y, **loss_context(name, n=6, like=x))
    loss.backward()
    assert torch.isfinite(loss), loss
    assert torch.isfinite(x.grad).all(), x.grad


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_close_to_float64(name):
    x, y = loss_inputs(name, n=16, k=5, scale=2.0)
    ctx = loss_context(name, n=16, like=x)
    loss = ready_loss(name)
    x_bf16 = x.to(torch.bfloat16)
    # a real-valued target is rounded too, and the reference gets the same rounded values
    y_bf16 = y.to(torch.bfloat16) if y.is_floating_point() else y
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(x_bf16, y_bf16, **ctx)
    assert low.dtype == torch.float32, "losses accumulate in float32 under autocast"
    ref_rounded = ready_loss(name).double()(
        x_bf16.double(), y_bf16.double() if y.is_floating_point() else y, **ctx
    )
    ref_exact = ready_loss(name).double()(
        x.double(), y.double() if y.is_floating_point() else y, **ctx
    )
    torch.testing.assert_close(low.double(), ref_rounded, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(low.double(), ref_exact, rtol=5e-2, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_state_moves_and_round_trips(name):
    x, y = loss_inputs(name, n=5, k=5, dtype=torch.float64)
    ctx = loss_context(name, n=5, like=x)
    loss = ready_loss(name).double()
    fresh = build_loss(name, **required_args(name)).double()
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh(x, y, **ctx), loss(x, y, **ctx))


@pytest.mark.parametrize("name", NAMES)
def test_dense_inputs_give_one_value_per_sample(name):
    x, y = loss_inputs(name, n=4, k=5, dense=(3, 2))
    try:
        out = ready_loss(name, reduction="none")(x, y, **loss_context(name, n=4, like=x))
    except ValueError as err:  # a loss may refuse dense input, but must say so clearly
        assert "input" in str(err)
        return
    assert out.shape == (4,)


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_is_defined(name):
    """N = 0: mean and sum are 0 with a zero gradient, none is (0,); a target of another
    length is a clear error."""
    x, y = loss_inputs(name, n=4, k=5)
    x0 = x[:0].clone().requires_grad_(True)
    ctx = loss_context(name, n=0, like=x0)
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (0,))):
        out = ready_loss(name, reduction=reduction)(x0, y[:0], **ctx)
        assert out.shape == shape and bool((out == 0).all())
    ready_loss(name)(x0, y[:0], **ctx).backward()
    assert x0.grad is not None and x0.grad.shape == x0.shape
    with pytest.raises(ValueError, match="target"):
        ready_loss(name)(x0, y, **ctx)


@pytest.mark.parametrize("name", NAMES)
def test_negative_or_non_finite_sample_weights_are_refused(name):
    x, y = loss_inputs(name, n=4, k=5)
    ctx = loss_context(name, n=4, like=x)
    loss = ready_loss(name)
    for bad, word in ((-1.0, "1 negative"), (float("nan"), "1 NaN"), (float("inf"), "1 infinite")):
        w = torch.tensor([1.0, bad, 0.5, 2.0])
        with pytest.raises(ValueError, match=rf"sample_weight.*finite and >= 0.*{word}"):
            loss(x, y, sample_weight=w, **ctx)
    with pytest.raises(TypeError, match=r"sample_weight.*real numbers"):
        loss(x, y, sample_weight=torch.ones(4, dtype=torch.bool), **ctx)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_wrong_target_shape_is_a_clear_error(name):
    x, y = loss_inputs(name, n=6, k=5)
    with pytest.raises(ValueError, match="target"):
        ready_loss(name)(x, y[:4], **loss_context(name, n=6, like=x))


@pytest.mark.parametrize("name", [n for n in NAMES if loss_info(n).target == "index"])
def test_label_out_of_range_is_a_clear_error(name):
    x, y = loss_inputs(name, n=6, k=5)
    y[2] = 5
    with pytest.raises(ValueError, match=r"target.*\b5\b|outside"):
        ready_loss(name)(x, y, **loss_context(name, n=6, like=x))


@pytest.mark.parametrize("name", [n for n in NAMES if loss_info(n).target == "multilabel"])
def test_multilabel_target_out_of_range_is_a_clear_error(name):
    """Checking that a float target lies in [0, 1] costs a pass over it, which no kernel makes
    anyway: it runs with ``validate_args=True``."""
    x, y = loss_inputs(name, n=6, k=5)
    y[2, 1] = 3.0
    with pytest.raises(ValueError, match=r"target.*\[0, 1\].*3\.0"):
        ready_loss(name, validate_args=True)(x, y, **loss_context(name, n=6, like=x))


@pytest.mark.parametrize("name", NAMES)
def test_nan_input_is_caught_when_asked(name):
    x, y = loss_inputs(name, n=6, k=5)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"input.*NaN"):
        ready_loss(name, validate_args=True)(x, y, **loss_context(name, n=6, like=x))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_and_bad_reduction(name):
    with pytest.raises(TypeError, match="unknown option"):
        build_loss(name, not_an_option=1)
    with pytest.raises(ValueError, match="reduction"):
        build_loss(name, reduction="average", **required_args(name))


@pytest.mark.parametrize(
    "name", [n for n in NAMES if issubclass(loss_info(n).cls, ClassCountsLoss)]
)
def test_class_counts_are_validated(name):
    loss = build_loss(name)
    with pytest.raises(ValueError, match=r"class_counts.*negative"):
        loss.set_class_counts([10.0, -1.0, 3.0, 4.0, 5.0])
    x, y = loss_inputs(name, n=4, k=5)
    with pytest.raises(ValueError, match="class counts"):
        loss(x, y, **loss_context(name, n=4, like=x))  # none given yet


def test_unknown_loss_name_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean 'focal'"):
        build_loss("focl")
    for bad in (None, 3, ["focal"]):
        with pytest.raises(TypeError, match="loss name must be a string"):
            build_loss(bad)


def test_wrong_input_type_is_a_type_error():
    with pytest.raises(TypeError, match="input"):
        build_loss("cross_entropy")([[0.1, 0.9]], torch.tensor([1]))
    with pytest.raises(TypeError, match="floating-point"):
        build_loss("cross_entropy")(torch.ones(2, 3, dtype=torch.long), torch.tensor([1, 0]))


# -- torch.compile (subset) ------------------------------------------------------------------


@pytest.mark.compile
@pytest.mark.parametrize("name", COMPILE_SUBSET)
def test_compiled_equals_eager(name):
    torch._dynamo.reset()
    x, y = loss_inputs(name, n=8, k=5)
    ctx = loss_context(name, like=x)
    loss = ready_loss(name, reduction="none")
    compiled = torch.compile(loss, fullgraph=False)
    torch.testing.assert_close(compiled(x, y, **ctx), loss(x, y, **ctx), rtol=1e-5, atol=1e-6)

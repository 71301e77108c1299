"""Cross-rank behaviour of the T2 metric losses and OPIS: 2 gloo processes on CPU against 1
process.

* ``gather_across_ranks=True`` (centroid triplet, TCM, Barlow Twins, iSogCLR): the mean of the
  ranks' losses equals the loss of the joint batch, and each rank's gradient for its own rows is
  ``world_size`` times the joint gradient (DDP's averaging divides it back out).
* iSogCLR's tables and AdaFace's norm statistics are synchronised: every rank ends a training
  step with the state one process would hold.
* OPIS gathers every rank's embeddings (torchmetrics' ``cat`` reduction).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_losses import build_loss
from lightning_losses.metrics import OPIS

pytestmark = [pytest.mark.ddp, pytest.mark.slow]  # two spawned processes import torch

WORLD, HALF = 2, 6
LABELLED = {"centroid_triplet": {}, "tcm": {"margin_plus": 0.95, "margin_minus": 0.0}}
TWO_VIEW = {"barlow_twins": {}, "isogclr": {"num_samples": 20, "eta": 0.5}}


def _batch():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2 * HALF, 4, generator=g, dtype=torch.float64)
    b = x + 0.6 * torch.randn(2 * HALF, 4, generator=g, dtype=torch.float64)
    # identities on both ranks, and identity 5 with one sample per rank
    y = torch.tensor([0, 0, 1, 2, 3, 5, 0, 1, 1, 2, 3, 5])
    index = torch.tensor([3, 7, 1, 12, 0, 9, 4, 11, 2, 19, 8, 6])
    return x, b, y, index


def _adaface():
    torch.manual_seed(0)
    return build_loss("adaface", num_classes=6, embedding_dim=4).double()


def _run(name, kwargs, x, b, y, index):
    """Value, gradients of the inputs and the loss's state after one training forward."""
    loss = build_loss(name, **kwargs).double()
    x = x.clone().requires_grad_(True)
    if name in TWO_VIEW:
        b = b.clone().requires_grad_(True)
        context = {"index": index} if name == "isogclr" else {}
        value = loss(x, b, **context)
    else:
        value = loss(x, y)
    value.backward()
    grads = (x.grad, b.grad) if name in TWO_VIEW else (x.grad,)
    return value.detach(), grads, {k: v.clone() for k, v in loss.state_dict().items()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, b, y, index = _batch()
        rows = slice(rank * HALF, (rank + 1) * HALF)
        part = (x[rows], b[rows], y[rows], index[rows])
        results = {}
        for name, kwargs in {**LABELLED, **TWO_VIEW}.items():
            results[name] = _run(name, {**kwargs, "gather_across_ranks": True}, *part)
        results["isogclr_local"] = _run("isogclr", TWO_VIEW["isogclr"], *part)
        ada = _adaface()
        value = ada(part[0].clone().requires_grad_(True), part[2])
        results["adaface"] = (value.detach(), ada.norm_mean.clone(), ada.norm_std.clone())
        ada_none = _adaface()
        ada_none.reduction = "none"
        results["adaface_rows"] = ada_none(part[0].clone().requires_grad_(True), part[2]).detach()
        metric = OPIS(num_thresholds=11)
        metric.update(part[0], part[2])
        results["opis"] = metric.compute()
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2_ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", [*LABELLED, *TWO_VIEW])
def test_gathered_ranks_equal_one_process_on_the_joint_batch(rank_results, name):
    kwargs = {**LABELLED, **TWO_VIEW}[name]
    value, grads, state = _run(name, kwargs, *_batch())
    values = torch.stack([rank_results[r][name][0] for r in range(WORLD)])
    torch.testing.assert_close(values.mean(), value)
    for k, joint_grad in enumerate(grads):
        per_rank = torch.cat([rank_results[r][name][1][k] for r in range(WORLD)])
        torch.testing.assert_close(per_rank / WORLD, joint_grad)
    for r in range(WORLD):  # iSogCLR's tables: every rank holds the joint batch's state
        for key, expected in state.items():
            torch.testing.assert_close(rank_results[r][name][2][key], expected)


def test_isogclr_tables_are_synchronised_without_the_gather(rank_results):
    """Each rank computes on its own half; both ranks hold the writes of both halves."""
    x, b, y, index = _batch()
    merged = build_loss("isogclr", **TWO_VIEW["isogclr"]).double()
    for r in range(WORLD):
        rows = slice(r * HALF, (r + 1) * HALF)
        alone = _run("isogclr", TWO_VIEW["isogclr"], x[rows], b[rows], y[rows], index[rows])
        for name in ("log_u", "tau_grad", "tau"):
            getattr(merged, name)[index[rows]] = alone[2][name][index[rows]]
    for r in range(WORLD):
        for name in ("log_u", "tau_grad", "tau"):
            torch.testing.assert_close(rank_results[r]["isogclr_local"][2][name],
                                       getattr(merged, name))  # fmt: skip
    assert not torch.equal(rank_results[0]["isogclr_local"][0], rank_results[1]["isogclr_local"][0])


def test_adaface_statistics_are_those_of_the_joint_batch(rank_results):
    x, _, y, _ = _batch()
    joint = _adaface()
    joint.reduction = "none"
    rows = joint(x.clone().requires_grad_(True), y).detach()
    for r in range(WORLD):
        _, mean, std = rank_results[r]["adaface"]
        torch.testing.assert_close(mean, joint.norm_mean)
        torch.testing.assert_close(std, joint.norm_std)
    per_rank = torch.cat([rank_results[r]["adaface_rows"] for r in range(WORLD)])
    torch.testing.assert_close(per_rank, rows)


def test_opis_gathers_every_rank(rank_results):
    x, _, y, _ = _batch()
    metric = OPIS(num_thresholds=11)
    metric.update(x, y)
    expected = metric.compute()
    for r in range(WORLD):
        torch.testing.assert_close(rank_results[r]["opis"], expected)

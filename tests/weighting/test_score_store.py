"""ScoreStore semantics, persistence, errors, and a real 2-process gloo gather."""

from __future__ import annotations

import io
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_losses.weighting import ScoreStore, gather_updates


def test_initial_state():
    store = ScoreStore(4)
    assert torch.equal(store.last_loss, torch.full((4,), 3.0))
    assert torch.equal(store.ema, torch.full((4,), 3.0))
    assert store.last_loss.dtype == torch.float32
    assert store.visits.dtype == torch.int64 and not store.visits.any()
    assert torch.equal(store.last_epoch, torch.full((4,), -1))
    assert not store.seen_mask().any()
    assert torch.equal(ScoreStore(3, initial_score=0.5).last_loss, torch.full((3,), 0.5))


def test_update_last_loss_ema_visits_epoch():
    store = ScoreStore(5, momentum=0.8)
    store.update(torch.tensor([1, 3]), torch.tensor([2.0, 4.0]), epoch=0)
    # first visit: the EMA is the loss itself, not a blend with the initial score
    assert torch.equal(store.ema, torch.tensor([3.0, 2.0, 3.0, 4.0, 3.0]))
    store.update(torch.tensor([3, 0]), torch.tensor([1.0, 0.5]), epoch=2)
    assert torch.allclose(store.last_loss, torch.tensor([0.5, 2.0, 3.0, 1.0, 3.0]))
    assert torch.allclose(store.ema, torch.tensor([0.5, 2.0, 3.0, 0.8 * 4.0 + 0.2 * 1.0, 3.0]))
    assert torch.equal(store.visits, torch.tensor([1, 1, 0, 2, 0]))
    assert torch.equal(store.last_epoch, torch.tensor([2, 0, -1, 2, -1]))
    assert torch.equal(store.seen_mask(), torch.tensor([True, True, False, True, False]))


def test_duplicates_in_one_update_are_one_observation_of_their_mean():
    store = ScoreStore(3)
    store.update(torch.tensor([2, 0, 2, 2]), torch.tensor([1.0, 5.0, 2.0, 6.0]), epoch=1)
    assert torch.allclose(store.last_loss, torch.tensor([5.0, 3.0, 3.0]))
    assert torch.equal(store.visits, torch.tensor([1, 0, 1]))
    # order of the duplicates does not matter
    other = ScoreStore(3)
    other.update(torch.tensor([2, 2, 0, 2]), torch.tensor([6.0, 1.0, 5.0, 2.0]), epoch=1)
    assert torch.equal(store.state_dict()["last_loss"], other.state_dict()["last_loss"])


def test_update_detaches_and_casts():
    store = ScoreStore(3)
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    store.update(torch.tensor([0, 1], dtype=torch.int32), losses * 1, epoch=0)
    assert not store.last_loss.requires_grad and store.last_loss.dtype == torch.float32
    assert torch.equal(store.last_loss, torch.tensor([1.0, 2.0, 3.0]))


def test_empty_update_is_a_no_op():
    store = ScoreStore(3)
    store.update(torch.zeros(0, dtype=torch.long), torch.zeros(0), epoch=0)
    assert not store.seen_mask().any()


def test_state_dict_round_trip_is_exact():
    store = ScoreStore(6, momentum=0.5)
    g = torch.Generator().manual_seed(0)
    for epoch in range(3):
        idx = torch.randint(0, 6, (4,), generator=g)
        store.update(idx, torch.rand(4, generator=g), epoch=epoch)
    buffer = io.BytesIO()
    torch.save(store.state_dict(), buffer)
    buffer.seek(0)
    restored = ScoreStore(6, momentum=0.5)
    restored.load_state_dict(torch.load(buffer))
    assert set(store.state_dict()) == {"last_loss", "ema", "visits", "last_epoch"}
    for name, value in store.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    # resumed and uninterrupted stores stay equal after the same further update
    for s in (store, restored):
        s.update(torch.tensor([0, 5]), torch.tensor([0.1, 0.2]), epoch=3)
    assert torch.equal(store.ema, restored.ema)


def test_nested_in_a_module_state_dict():
    parent = torch.nn.Module()
    parent.store = ScoreStore(2)
    assert "store.last_epoch" in parent.state_dict()


def test_to_moves_buffers_and_updates_accept_other_devices():
    store = ScoreStore(3).to(torch.float32).to("meta")
    assert all(b.device.type == "meta" for b in store.buffers())
    store = ScoreStore(3).to("cpu")
    store.update(torch.tensor([1]), torch.tensor([0.25]), epoch=0)  # cpu inputs, cpu store
    assert store.last_loss[1] == 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_store_takes_cpu_inputs():
    store = ScoreStore(3).to("cuda")
    store.update(torch.tensor([2]), torch.tensor([0.5]), epoch=0)
    assert store.last_loss.device.type == "cuda" and float(store.last_loss[2]) == 0.5


def test_num_samples_mismatch_on_load():
    with pytest.raises(ValueError, match="num_samples"):
        ScoreStore(4).load_state_dict(ScoreStore(5).state_dict())


@pytest.mark.parametrize(
    ("indices", "losses", "match"),
    [
        (torch.tensor([0, 4]), torch.tensor([1.0, 1.0]), "indices"),
        (torch.tensor([-1]), torch.tensor([1.0]), "indices"),
        (torch.tensor([0.0]), torch.tensor([1.0]), "indices"),
        (torch.tensor([True]), torch.tensor([1.0]), "indices"),
        (torch.tensor([[0]]), torch.tensor([[1.0]]), "indices"),
        (torch.tensor([0, 1]), torch.tensor([1.0]), "losses"),
        (torch.tensor([0]), torch.tensor([float("nan")]), "losses"),
        (torch.tensor([0]), torch.tensor([float("inf")]), "losses"),
        (torch.tensor([0]), torch.tensor([1]), "losses"),
    ],
)
def test_update_errors_name_the_argument(indices, losses, match):
    store = ScoreStore(4)
    with pytest.raises(ValueError, match=match):
        store.update(indices, losses, epoch=0)
    assert not store.seen_mask().any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="epoch"):
        ScoreStore(2).update(torch.tensor([0]), torch.tensor([1.0]), epoch=-1)
    with pytest.raises(TypeError, match="losses"):
        ScoreStore(2).update(torch.tensor([0]), [1.0], epoch=0)
    with pytest.raises(ValueError, match="num_samples"):
        ScoreStore(0)
    with pytest.raises(ValueError, match="momentum"):
        ScoreStore(2, momentum=1.0)


def test_gather_updates_is_identity_without_a_process_group():
    idx, loss = torch.tensor([3, 1]), torch.tensor([0.5, 0.25], dtype=torch.float64)
    out_idx, out_loss = gather_updates(idx, loss)
    assert torch.equal(out_idx, idx) and torch.equal(out_loss, loss.float())


# -- two real processes with gloo -----------------------------------------------------------

NUM_SAMPLES = 10


def _rank_updates(rank: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Per-step updates of each rank: different sizes, an empty step, cross-rank duplicates."""
    g = torch.Generator().manual_seed(100 + rank)
    sizes = [[3, 0, 4], [1, 2, 4]][rank]
    steps = []
    for step, n in enumerate(sizes):
        idx = torch.randint(0, NUM_SAMPLES, (n,), generator=g)
        if step == 2:
            idx[0] = 7  # both ranks see sample 7 in the same step
        steps.append((idx, torch.rand(n, generator=g), step // 2))
    return steps


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        store = ScoreStore(NUM_SAMPLES)
        for idx, loss, epoch in _rank_updates(rank):
            all_idx, all_loss = gather_updates(idx, loss)
            store.update(all_idx, all_loss, epoch=epoch)
        torch.save(store.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_processes_end_with_the_single_process_store(tmp_path):
    world = 2
    mp.spawn(
        _ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True
    )
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    single = ScoreStore(NUM_SAMPLES)
    per_rank = [_rank_updates(r) for r in range(world)]
    for steps in zip(*per_rank, strict=True):
        idx = torch.cat([s[0] for s in steps])
        loss = torch.cat([s[1] for s in steps])
        single.update(idx, loss, epoch=steps[0][2])

    assert single.visits[7] >= 1
    for state in states:
        for name, value in single.state_dict().items():
            assert torch.equal(state[name], value), name

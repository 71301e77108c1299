"""The embedded identity dataset and ReIDDataModule over it."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from lightning_losses import LossMixin
from lightning_losses.callbacks import InfoBatch
from lightning_losses.data.identities import IdentityImages, synthetic_identities
from lightning_losses.data.pk_sampler import PKSampler
from lightning_losses.data.reid_datamodule import QueryGallery, ReIDDataModule
from lightning_losses.metrics.retrieval import reid_metrics

SMALL = {"num_identities": 40, "num_distractors": 6, "image_size": (32, 16)}


@pytest.fixture(scope="module")
def small():
    return synthetic_identities(**SMALL, seed=3)


def test_deterministic_from_the_seed(small):
    again = synthetic_identities(**SMALL, seed=3)
    other = synthetic_identities(**SMALL, seed=4)
    for a, b in zip(small, again, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.ids, b.ids)
        assert torch.equal(a.cameras, b.cameras)
    assert not torch.equal(small.query.images, other.query.images)


def test_split_sizes_ids_and_market_structure(small):
    train, query, gallery = small
    # 20 train and 20 test identities, 3 cameras x 3 shots each; one query per camera
    assert (len(train), len(query), len(gallery)) == (180, 60, 126)
    assert sorted(set(train.ids.tolist())) == list(range(20))
    assert set(query.ids.tolist()) == set(range(1, 21))
    assert set(gallery.ids.tolist()) == set(range(0, 21))
    assert int((gallery.ids == 0).sum()) == 6  # distractors
    for pid in range(1, 21):
        q_cams = query.cameras[query.ids == pid]
        g_cams = gallery.cameras[gallery.ids == pid]
        assert len(set(q_cams.tolist())) == 3 == len(q_cams)  # one query per camera
        # two more shots under each of its cameras: matches under the other cameras
        assert Counter(g_cams.tolist()) == Counter(2 * q_cams.tolist())
    # train and test people are different people: no train image appears among the test ones
    test_images = torch.cat([query.images, gallery.images]).flatten(1)
    assert not (train.images.flatten(1)[:, None] == test_images[None]).all(-1).any()


def test_samples_are_mappings_with_normalised_images(small):
    sample = small.query[5]
    assert set(sample) == {"image", "id", "camera", "index"}
    assert sample["image"].shape == (3, 32, 16) and sample["image"].dtype == torch.float32
    assert sample["index"] == 5 and sample["id"] == int(small.query.ids[5])
    expected = (small.query.images[5].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(sample["image"], expected)
    torch.manual_seed(0)
    augmented = [small.train[0]["image"] for _ in range(8)]
    assert any(not torch.equal(augmented[0], a) for a in augmented[1:])
    assert small.train[0]["image"].shape == (3, 32, 16)


def test_hard_for_raw_pixels():
    # rank-1 of raw pixels is far below 1: cameras change colour, blur, background and pose
    splits = synthetic_identities(num_identities=120, num_distractors=20, image_size=(32, 16))
    q, g = splits.query, splits.gallery
    out = reid_metrics(
        q.images.flatten(1).float(), q.ids, q.cameras, g.images.flatten(1).float(), g.ids, g.cameras
    )
    assert float(out["rank1"]) < 0.3 and float(out["map"]) < 0.3
    assert int(out["num_skipped"]) == 0


def test_difficulty_knobs_change_the_images():
    easy = synthetic_identities(
        num_identities=10, num_distractors=0, image_size=(32, 16), camera_shift=0.0,
        max_blur=0.0, noise=0.0, scale_jitter=0.0, brightness=0.0, flip=False,
    )  # fmt: skip
    # without camera and shot effects, two shots of a person under one camera are identical
    tr = easy.train
    for pid in range(5):
        imgs = tr.images[tr.ids == pid]
        cams = tr.cameras[tr.ids == pid]
        assert torch.equal(imgs[0], imgs[1]) and cams[0] == cams[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_train": 40}, "num_train"),
        ({"cameras_per_identity": 7}, "cameras_per_identity"),
        ({"shots_per_camera": 1}, "shots_per_camera"),
        ({"image_size": (8, 16)}, "image_size"),
        ({"noise": 2.0}, "noise"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_identities(num_identities=40, **kwargs)


def test_identity_images_checks_its_input():
    with pytest.raises(ValueError, match="uint8"):
        IdentityImages(torch.zeros(2, 3, 4, 4), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="cameras"):
        IdentityImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2), torch.zeros(3))


def test_datamodule_trains_with_pk_batches_and_evaluates_query_and_gallery():
    dm = ReIDDataModule(p=4, k=3, eval_batch_size=50, identities=SMALL)
    assert dm.num_classes == 20
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, PKSampler)
    batch = next(iter(loader))
    assert batch["image"].shape == (12, 3, 32, 16)
    assert sorted(Counter(batch["id"].tolist()).values()) == [3, 3, 3, 3]
    seen = [b for b in dm.val_dataloader()]
    is_query = torch.cat([b["is_query"] for b in seen])
    index = torch.cat([b["index"] for b in seen])
    assert int(is_query.sum()) == len(dm.splits.query) and len(is_query) == 186
    assert torch.equal(index, torch.arange(186))
    assert isinstance(dm.test_dataloader().dataset, QueryGallery)


def test_datamodule_identities_need_the_embedded_data():
    with pytest.raises(ValueError, match="data_dir=None"):
        ReIDDataModule(data_dir="somewhere", identities={"num_identities": 10})


class _Embed(LossMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 16, 20))
        self.criterion = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        return self.compute_loss(self.net(batch["image"]), batch["id"], batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_datamodule_refuses_a_sampler_owning_callback_by_name():
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[InfoBatch()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    dm = ReIDDataModule(p=4, k=3, identities=SMALL)
    with pytest.raises(ValueError, match="InfoBatch owns the training sampler"):
        trainer.fit(_Embed(), datamodule=dm)


def _fake_trainer(world, rank, use_distributed_sampler=False):
    connector = SimpleNamespace(use_distributed_sampler=use_distributed_sampler)
    return SimpleNamespace(
        world_size=world, global_rank=rank, callbacks=[], _accelerator_connector=connector
    )


def test_datamodule_shards_by_identity_and_evaluation_by_sample_under_ddp():
    shares = []
    for rank in range(2):
        dm = ReIDDataModule(p=4, k=2, identities=SMALL)
        dm.trainer = _fake_trainer(2, rank)
        sampler = dm.train_dataloader().batch_sampler
        assert (sampler.num_replicas, sampler.rank) == (2, rank)
        shares.append([dm.splits.train.ids[b].unique().tolist() for b in sampler])
        val = dm.val_dataloader()
        assert isinstance(val.sampler, DistributedSampler) and len(val.sampler) == 93
    assert len(shares[0]) == len(shares[1])
    assert all(not set(a) & set(b) for a, b in zip(*shares, strict=True))


def test_datamodule_asks_for_use_distributed_sampler_false():
    dm = ReIDDataModule(p=4, k=2, identities=SMALL)
    dm.trainer = _fake_trainer(2, 0, use_distributed_sampler=True)
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.train_dataloader()

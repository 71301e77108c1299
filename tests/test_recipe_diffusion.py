"""The diffusion recipe end to end through LightningCLI (tiny runs), its data and its report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_losses.data.diffusion_datamodule import (
    DiffusionImagesDataModule,
    corrupt_images,
    digits_images,
)
from lightning_losses.metrics.sample_quality import SampleQuality, load_or_train_classifier
from lightning_losses.tasks.diffusion import DiffusionModule, cli_main, format_quality_table

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"
CONFIG = CONFIGS / "diffusion.yaml"
OVERLAYS = [
    "diffusion_vpred_minsnr.yaml",
    "diffusion_x0.yaml",
    "diffusion_edm.yaml",
    "diffusion_pseudo_huber.yaml",
    "diffusion_offset_noise.yaml",
]
ROW_KEYS = {
    "fid",
    "kid",
    "kid_std",
    "confident_fraction",
    "mean_confidence",
    "class_entropy",
    "class_fractions",
}
TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "1",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--data.batch_size",
    "16",
    "--model.block_out_channels",
    "[8, 16]",
    "--model.num_samples",
    "12",
    "--model.val_samples",
    "4",
    "--model.sampler_steps",
    "3",
    "--model.classifier_epochs",
    "1",
]


def _config_args(*overlays: str) -> list[str]:
    args = ["--config", str(CONFIG)]
    for overlay in overlays:
        args += ["--config", str(CONFIGS / overlay)]
    return args


def _run(tmp_path: Path, *extra: str, overlays: tuple[str, ...] = ()):
    args = [
        "fit",
        *_config_args(*overlays),
        *TINY,
        *extra,
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    cli = cli_main(args)
    return cli, Path(cli.trainer.log_dir)


def _check_report(run_dir: Path) -> dict:
    report = json.loads((run_dir / "test_metrics.json").read_text())
    assert list(report["rows"]) == [
        "samples",
        "untrained model",
        "gaussian noise",
        "real (test split)",
    ]
    for name, row in report["rows"].items():
        assert set(row) >= ROW_KEYS, name
        assert row["fid"] >= 0 and 0 <= row["confident_fraction"] <= 1, name
        assert len(row["class_fractions"]) == 10 and abs(sum(row["class_fractions"]) - 1) < 1e-6
    assert set(report["loss_by_bucket"]) >= {"train", "val", "test"}
    assert all(len(v) == 10 for v in report["loss_by_bucket"].values())
    assert 0 <= report["classifier_accuracy"] <= 1
    for png in ("test_samples.png", "test_loss_by_timestep.png"):
        with Image.open(run_dir / png) as image:
            assert image.size[0] > 200 and image.size[1] > 150
    return report


@pytest.mark.slow
@pytest.mark.parametrize("overlays", [(), ("diffusion_edm.yaml",)])
def test_fit_then_test_writes_the_report(tmp_path, capsys, overlays):
    cli, run_dir = _run(tmp_path, overlays=overlays)
    out = capsys.readouterr().out  # one table, the recipe's own, on stdout
    assert out.count("test report written to") == 1 and "Test metric" not in out
    report = _check_report(run_dir)
    # class-conditional by default: the samples' label agreement is reported
    assert "label_agreement" in report["rows"]["samples"]
    callbacks = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert "EMAWeightAveraging" in callbacks
    # the classifier is cached under the run's root and reused by the next run
    cached = list((tmp_path / "sample_quality").glob("sample_classifier_*.pt"))
    assert len(cached) == 1 and report["classifier_cache"] == str(cached[0])
    assert cli.model.net.config.in_channels == 1 and cli.model.hparams.image_size == 8


def test_every_overlay_builds_its_model_and_data():
    expected = {
        "diffusion_vpred_minsnr.yaml": ("v_prediction", "min_snr", "DiffusionLoss"),
        "diffusion_x0.yaml": ("sample", "min_snr", "DiffusionLoss"),
        "diffusion_edm.yaml": ("edm", "edm", "DiffusionLoss"),
        "diffusion_pseudo_huber.yaml": ("epsilon", "constant", "DiffusionPseudoHuberLoss"),
        "diffusion_offset_noise.yaml": ("epsilon", "constant", "DiffusionLoss"),
    }
    for overlay in [None, *OVERLAYS]:
        overlays = (overlay,) if overlay else ()
        cli = cli_main(_config_args(*overlays), run=False)
        criterion = cli.model.criterion
        prediction, weighting, cls = expected.get(overlay, ("epsilon", "constant", "DiffusionLoss"))
        assert criterion.prediction_type == prediction, overlay
        assert criterion.weighting == weighting, overlay
        assert type(criterion).__name__ == cls, overlay
    cli = cli_main(_config_args("diffusion_pseudo_huber.yaml"), run=False)
    assert cli.datamodule.corrupt_fraction == 0.2 and cli.model.criterion.c_schedule == "snr"
    cli = cli_main(_config_args("diffusion_offset_noise.yaml"), run=False)
    assert cli.model.hparams.offset_noise == 0.1


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--model.loss", "focal", r"`loss` must be one of|'focal'"),
        ("--model.prediction_type", "eps", r"`prediction_type`.*'eps'"),
        ("--model.loss_kwargs", '{"weighting": "min_snr"}', r"EDM|edm"),
        ("--model.loss_kwargs", '{"weighting": "min_snr", "min_snr_gamma": 0}', r"min_snr_gamma"),
        ("--data.corrupt_fraction", "1.5", r"`corrupt_fraction` must be a fraction"),
        ("--model.block_out_channels", "[8, 8, 8, 8, 8]", r"`image_size` \(8\) must be divisible"),
        ("--model.guidance_scale", "2.0", r"`guidance_scale`.*class_conditional"),
    ],
)
def test_a_wrong_option_is_one_readable_line(tmp_path, capsys, option, value, expected):
    overlays = ("diffusion_edm.yaml",) if value == '{"weighting": "min_snr"}' else ()
    extra = [option, value]
    if option == "--model.guidance_scale":
        extra += ["--model.class_conditional", "false"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [*_config_args(*overlays), *extra, "--trainer.default_root_dir", str(tmp_path)],
            run=False,
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(expected, lines[0]), err
    assert "Traceback" not in err


def test_digits_datamodule_splits_corrupts_and_keeps_a_clean_reference():
    dm = DiffusionImagesDataModule(corrupt_fraction=0.2, seed=3)
    dm.setup()
    n_train, n_val, n_test = len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)
    assert n_train + n_val + n_test == 1797 and 170 <= n_val <= 190 and 170 <= n_test <= 190
    corrupted = dm.corrupted_mask
    assert int(corrupted.sum()) == round(0.2 * n_train)
    clean, _ = dm.reference_images()
    images = dm.train_dataset.images
    torch.testing.assert_close(images[~corrupted], clean[~corrupted])
    assert not torch.allclose(images[corrupted], clean[corrupted])
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    sample = dm.train_dataset[0]
    assert set(sample) == {"image", "label", "index", "corrupted"}
    assert sample["image"].shape == (1, 8, 8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (64, 1, 8, 8) and batch["label"].shape == (64,)
    # validation and test stay clean digits
    assert not bool(dm.val_dataset.corrupted.any())


def test_corruption_is_seeded_and_zero_is_a_no_op():
    x = torch.zeros(10, 1, 4, 4)
    a, mask_a = corrupt_images(x, 0.3, seed=1)
    b, mask_b = corrupt_images(x, 0.3, seed=1)
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b) and int(mask_a.sum()) == 3
    same, none = corrupt_images(x, 0.0)
    assert same is x and not bool(none.any())
    with pytest.raises(ValueError, match="corrupt_fraction"):
        corrupt_images(x, 1.0)


def test_digits_resize_to_any_size():
    images, labels = digits_images(16)
    assert images.shape == (1797, 1, 16, 16) and labels.shape == (1797,)
    assert float(images.min()) >= -1 and float(images.max()) <= 1


def test_image_folder_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for name in ("a", "b"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (rng.random((10, 10, 3)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    dm = DiffusionImagesDataModule(
        data_dir=str(tmp_path), image_size=8, in_chans=3, val_size=0.2, batch_size=4
    )
    dm.setup()
    assert dm.num_classes == 2 and dm.classes == ["a", "b"]
    assert len(dm.test_dataset) == 4  # the folder's own test split
    assert len(dm.train_dataset) + len(dm.val_dataset) == 12
    assert dm.train_dataset.images.shape[1:] == (3, 8, 8)
    with pytest.raises(ValueError, match="`data_dir` must be an existing folder"):
        DiffusionImagesDataModule(data_dir=str(tmp_path / "missing"))


def test_sample_quality_ranks_real_digits_above_noise_and_caches_the_classifier(tmp_path):
    dm = DiffusionImagesDataModule()
    dm.setup()
    images, labels = dm.reference_images()
    classifier, path = load_or_train_classifier(images, labels, 10, tmp_path, epochs=3)
    assert path is not None and path.is_file()
    again, same_path = load_or_train_classifier(images, labels, 10, tmp_path, epochs=3)
    assert same_path == path
    for a, b in zip(classifier.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    quality = SampleQuality(classifier, images, kid_subset_size=50, kid_subsets=5)
    real = quality.evaluate(dm.test_dataset.images, dm.test_dataset.labels)
    noise = quality.evaluate(torch.randn(200, 1, 8, 8).clamp(-1, 1))
    assert real["fid"] < noise["fid"] and real["kid"] < noise["kid"]
    assert "label_agreement" in real and "label_agreement" not in noise
    with pytest.raises(ValueError, match="`images` must have the reference's shape"):
        quality.evaluate(torch.zeros(4, 1, 16, 16))


def test_training_step_reads_nothing_back_to_the_host():
    from lightning_losses.testing import no_host_sync

    torch.manual_seed(0)
    batch = {"image": torch.rand(4, 1, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 2, 3])}
    for prediction_type in ("epsilon", "v_prediction", "edm"):
        model = DiffusionModule(
            block_out_channels=(8, 16), prediction_type=prediction_type, offset_noise=0.1
        )
        with no_host_sync():
            loss = model.training_step(batch, 0)
            loss.backward()
        assert torch.isfinite(loss)
        assert model.net.conv_in.weight.grad is not None


def test_sampling_returns_images_in_range_with_and_without_guidance():
    torch.manual_seed(0)
    model = DiffusionModule(block_out_channels=(8, 16), guidance_scale=2.0)
    images = model.sample(6, model.sample_labels(6), steps=2)
    assert images.shape == (6, 1, 8, 8)
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    unconditional = DiffusionModule(block_out_channels=(8, 16), class_conditional=False)
    assert unconditional.sample_labels(3) is None
    assert unconditional.sample(3, steps=2).shape == (3, 1, 8, 8)
    edm = DiffusionModule(block_out_channels=(8, 16), prediction_type="edm")
    assert edm.sample(2, edm.sample_labels(2), steps=2).shape == (2, 1, 8, 8)


def test_report_table_has_one_row_per_source():
    table = format_quality_table(
        "t",
        {
            "samples": {"fid": 1.5, "confident_fraction": 0.9, "label_agreement": 0.8},
            "gaussian noise": {"fid": 100.0, "confident_fraction": 0.1},
        },
    )
    assert re.search(r"samples\s+1\.5000\s+-\s+0\.9000", table)
    assert re.search(r"gaussian noise\s+100\.0000", table)

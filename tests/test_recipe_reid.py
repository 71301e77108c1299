"""The re-ID recipe end to end through LightningCLI (tiny runs), its model and its report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from lightning_losses.data.identities import synthetic_identities
from lightning_losses.data.reid_datamodule import QueryGallery
from lightning_losses.registry import build_loss
from lightning_losses.tasks.reid import (
    ReIDModule,
    build_reid_criterion,
    cli_main,
    format_reid_table,
    plot_retrieval,
    set_last_stride_one,
    warmup_cosine,
)
from lightning_losses.testing import no_host_sync

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"
CONFIG = CONFIGS / "reid.yaml"
KEYS = {"rank1", "rank5", "rank10", "map", "minp", "num_queries"}
TINY = '{"num_identities": 16, "num_distractors": 4, "image_size": [32, 16]}'
NARROW = '{"channels": [8, 16, 32, 64], "stem_width": 8}'


def _run(tmp_path: Path, *extra: str, data: tuple[str, ...] | None = None):
    data = ("--data.identities", TINY) if data is None else data
    args = [
        "fit",
        "--config",
        str(CONFIG),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.backbone_kwargs",
        NARROW,
        "--model.panel_queries",
        "2",
        "--model.panel_ranks",
        "3",
        "--data.p",
        "4",
        "--data.k",
        "2",
        *data,
        *extra,
    ]
    cli = cli_main(args)
    return cli, Path(cli.trainer.log_dir)


def _check_report(run_dir: Path) -> dict:
    report = json.loads((run_dir / "test_metrics.json").read_text())
    assert set(report["metrics"]) == {"plain", "reranked"}
    for values in report["metrics"].values():
        assert set(values) == KEYS
        for key in ("rank1", "rank5", "rank10", "map", "minp"):
            assert 0.0 <= values[key] <= 1.0, key
        assert values["rank1"] <= values["rank5"] <= values["rank10"]
    with Image.open(run_dir / "test_retrieval.png") as image:
        assert image.size[0] > 200 and image.size[1] > 100
    return report


@pytest.mark.slow
def test_default_config_fits_tests_and_writes_the_report(tmp_path, capsys):
    cli, run_dir = _run(tmp_path)
    report = _check_report(run_dir)
    model = cli.model
    assert model.classifier.out_features == cli.datamodule.num_classes == 8  # linked
    assert list(model.criterion.terms) == ["cross_entropy", "triplet"]
    assert model.criterion.terms["cross_entropy"].loss.label_smoothing == 0.1
    assert model.criterion.terms["triplet"].loss.margin == 0.3
    assert model.last_stride_one and report["last_stride_one"]
    assert report["metrics"]["plain"]["num_queries"] == 8 * 3  # one query per camera
    out = capsys.readouterr().out
    table = out[out.index("test report") :]
    assert re.search(r"R1\s+\d\.\d{4}\s+\d\.\d{4}", table) and "re-ranked" in table
    assert "mINP" in table and "test_retrieval.png" in table


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overlay", "terms", "group"),
    [
        ("reid_circle.yaml", ["cross_entropy", "circle"], False),
        ("reid_arcface.yaml", ["arcface", "triplet"], True),
        ("reid_cosface.yaml", ["cosface", "triplet"], True),
        ("reid_center.yaml", ["cross_entropy", "triplet", "center"], False),
        ("reid_supcon.yaml", ["cross_entropy", "supcon"], False),
    ],
)
def test_overlays_train_with_their_terms(tmp_path, overlay, terms, group):
    cli, run_dir = _run(tmp_path, "--config", str(CONFIGS / overlay))
    _check_report(run_dir)
    model = cli.model
    assert list(model.criterion.terms) == terms
    optimizer = cli.trainer.optimizers[0]
    names = [g["name"] for g in optimizer.param_groups]
    assert names == (["model", "loss"] if group else ["model"])
    if group:  # the margin head owns the class weights: no linear classifier, own group
        assert model.classifier is None
        head = model.criterion.terms[terms[0]].loss
        assert head.weight.shape == (8, model.net.num_features)
        assert optimizer.param_groups[1]["params"] == [head.weight]
        assert optimizer.param_groups[1]["weight_decay"] == 0.0
    if overlay == "reid_center.yaml":
        assert model.criterion.weights == [1.0, 1.0, 0.001]
        assert model.criterion.terms["center"].loss.update == "moving_average"


def _write_market(root: Path) -> Path:
    rng = np.random.default_rng(0)
    names = {
        "bounding_box_train": [
            f"{pid:04d}_c{cam}s1_{pid * 100 + shot:06d}_01.jpg"
            for pid in (2, 7, 11, 12)
            for cam in (1, 2)
            for shot in range(2)
        ],
        "query": [f"{pid:04d}_c1s1_000001_00.jpg" for pid in (3, 5, 8)],
        "bounding_box_test": [
            f"{pid:04d}_c{cam}s1_{10 + shot:06d}_01.jpg"
            for pid in (3, 5, 8)
            for cam in (1, 3)
            for shot in range(2)
        ]
        + ["-1_c2s1_000090_01.jpg", "0000_c4s1_000091_01.jpg"],
    }
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            pixels = rng.integers(0, 255, (24, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / name)
    return root


@pytest.mark.slow
def test_data_dir_switches_to_the_market_layout(tmp_path):
    root = _write_market(tmp_path / "market")
    cli, run_dir = _run(
        tmp_path / "run",
        data=("--data.data_dir", str(root), "--data.image_size", "[32, 16]"),
    )
    assert cli.datamodule.num_classes == 4 and cli.model.classifier.out_features == 4
    report = _check_report(run_dir)
    assert report["metrics"]["plain"]["num_queries"] == 3


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--model.loss", '["cross_entropy", "triplt"]', r"unknown loss name 'triplt'.*'triplet'"),
        ("--model.loss_weights", "[1.0]", r"`loss_weights` must have one weight per loss term"),
        ("--model.loss_kwargs", '{"triplet": {"margn": 1}}', r"unknown option\(s\) 'margn'"),
        ("--model.loss_inputs", '{"triplet": "pooled"}', r"`loss_inputs` maps 'triplet'"),
        ("--model.loss_inputs", '{"cross_entropy": "features"}', r"it takes 'logits'"),
        ("--model.loss_inputs", '{"circle": "bnneck"}', r"`loss_inputs` is keyed by the names"),
        ("--model.backbone", "resnet81", r"`backbone` 'resnet81' is not a timm architecture"),
        ("--model.last_stride", "3", r"`last_stride` must be 1 or 2"),
        ("--data.k", "1", r"`k` >= 2 instances per identity; got k=1"),
        ("--data.data_dir", "/no/such/folder", r"Market-1501 root '/no/such/folder' is not a"),
    ],
)
def test_a_wrong_option_is_one_readable_line(tmp_path, capsys, option, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        if option == "--data.data_dir":  # the embedded data's options would conflict
            _run(tmp_path, data=(option, value))
        else:
            _run(tmp_path, option, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(expected, lines[0]), err
    assert "Traceback" not in err and "usage:" not in err


def test_a_malformed_market_file_name_is_named(tmp_path, capsys):
    root = _write_market(tmp_path / "market")
    Image.new("RGB", (12, 24)).save(root / "query" / "3_c1s1_000001_00.jpg")
    with pytest.raises(SystemExit):
        _run(tmp_path / "run", data=("--data.data_dir", str(root)))
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert "3_c1s1_000001_00" in line


def test_loss_sum_gives_each_term_its_own_output():
    torch.manual_seed(0)
    n, dim, classes = 8, 6, 4
    features = torch.randn(n, dim, requires_grad=True)
    bnneck = torch.randn(n, dim, requires_grad=True)
    logits = torch.randn(n, classes, requires_grad=True)
    target = torch.arange(4).repeat(2)
    criterion = build_reid_criterion(
        ["cross_entropy", "triplet", "arcface"],
        [1.0, 0.5, 2.0],
        {"cross_entropy": {"label_smoothing": 0.1}},
        None,
        num_classes=classes,
        embedding_dim=dim,
    )
    arcface = criterion.terms["arcface"].loss
    assert (arcface.num_classes, arcface.embedding_dim) == (classes, dim)  # filled in
    packed = torch.cat([features, bnneck, logits], 1)
    expected = (
        build_loss("cross_entropy", label_smoothing=0.1, reduction="none")(logits, target)
        + 0.5 * build_loss("triplet", reduction="none")(features, target)
        + 2.0 * arcface.sample_losses(bnneck, target).values
    )
    criterion.reduction = "none"
    torch.testing.assert_close(criterion(packed, target), expected)
    criterion.reduction = "mean"
    with no_host_sync():
        criterion(packed, target).backward()
    assert all(t.grad is not None for t in (features, bnneck, logits))


def test_loss_inputs_override_the_default_output():
    criterion = build_reid_criterion(
        ["cross_entropy", "supcon"],
        None,
        None,
        {"supcon": "bnneck"},
        num_classes=3,
        embedding_dim=5,
    )
    assert criterion.terms["supcon"].output == "bnneck"
    assert criterion.terms["supcon"].columns == (5, 10)
    assert criterion.terms["cross_entropy"].columns == (10, None)


@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])
def test_last_stride_one_doubles_the_final_feature_map(name):
    x = torch.randn(1, 3, 64, 32)
    plain = timm.create_model(name, pretrained=False, num_classes=0, channels=(8, 16, 32, 64))
    patched = timm.create_model(name, pretrained=False, num_classes=0, channels=(8, 16, 32, 64))
    assert set_last_stride_one(patched)
    before = plain.forward_features(x).shape[-2:]
    after = patched.forward_features(x).shape[-2:]
    assert (after[0], after[1]) == (2 * before[0], 2 * before[1])


def test_last_stride_is_left_alone_where_the_last_stage_does_not_downsample():
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0)
    assert not set_last_stride_one(vit)
    model = ReIDModule(
        backbone="test_vit", backbone_kwargs={"img_size": (32, 16)}, num_classes=3, last_stride=1
    )
    assert not model.last_stride_one
    out = model(torch.randn(2, 3, 32, 16))
    assert out.features.shape == out.bnneck.shape == (2, model.net.num_features)


def test_bnneck_shift_is_frozen_and_the_classifier_has_no_bias():
    model = ReIDModule(num_classes=5, backbone_kwargs={"channels": [8, 16, 32, 64]})
    assert not model.neck.bn.bias.requires_grad
    assert model.classifier.bias is None and model.classifier.out_features == 5
    model.eval()
    out = model(torch.randn(3, 3, 32, 16))
    torch.testing.assert_close(out.logits, out.bnneck @ model.classifier.weight.T)
    no_logits = ReIDModule(num_classes=5, loss=["arcface", "triplet"])
    assert no_logits.classifier is None


def test_warmup_then_cosine():
    f = warmup_cosine(total=100, warmup=10, factor=0.1)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(total=10, warmup=0, factor=0.1)(0) == pytest.approx(1.0)


def test_report_table_has_plain_and_reranked_columns():
    row = {"rank1": 0.9, "rank5": 0.95, "rank10": 0.97, "map": 0.8, "minp": 0.6}
    table = format_reid_table(
        "t", {"plain": {**row, "num_queries": 12}, "reranked": {**row, "map": 0.85}}
    )
    header = next(line for line in table.splitlines() if "re-ranked" in line)
    assert header.split() == ["plain", "re-ranked"]
    assert re.search(r"mAP\s+0\.8000\s+0\.8500", table)
    assert re.search(r"mINP\s+0\.6000\s+0\.6000", table) and "(12 queries)" in table


def test_retrieval_panel_frames_matches_green_and_others_red(tmp_path):
    splits = synthetic_identities(num_identities=8, num_distractors=2, image_size=(32, 16))
    dataset = QueryGallery(splits.query, splits.gallery)
    ids = torch.cat([splits.query.ids, splits.gallery.ids])
    cams = torch.cat([splits.query.cameras, splits.gallery.cameras])
    # features that put each identity's own images first
    features = torch.nn.functional.one_hot(ids, 5 + 1).float() + 0.01 * torch.randn(len(ids), 6)
    is_query = torch.arange(len(ids)) < len(splits.query)
    data = {"features": features, "id": ids, "camera": cams, "is_query": is_query}
    path = plot_retrieval(dataset, data, tmp_path / "panel.png", queries=2, ranks=6)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)

    def share(rgb):
        return (np.abs(pixels - np.array(rgb)).sum(-1) < 40).mean()

    # each query has 4 correct matches under its other cameras, then wrong ones: both colours
    assert share((0x1A, 0x9C, 0x2F)) > 0.002 and share((0xD6, 0x27, 0x28)) > 0.002


def test_the_recipe_is_addressable_by_name_with_its_default_config():
    from lightning_losses.recipe_runner import list_configs, list_recipes, recipe_argv

    assert "reid" in list_recipes()
    overlays = {"reid_circle", "reid_arcface", "reid_cosface", "reid_center", "reid_supcon"}
    assert {"reid", *overlays} <= set(list_configs())
    assert recipe_argv("reid", "fit", []) == ["fit", "--config", str(CONFIG)]
    argv = recipe_argv("reid", "fit", ["-c", "reid", "-c", "reid_center"])
    assert argv == ["fit", "-c", str(CONFIG), "-c", str(CONFIGS / "reid_center.yaml")]

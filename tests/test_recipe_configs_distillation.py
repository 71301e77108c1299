"""The distillation config pair through the classification CLI (short runs).

``distill_teacher.yaml`` saves the teacher to ``runs/distill_teacher/teacher.ckpt`` relative to
the working directory and ``distill_student.yaml`` reads it from there, so the runs here happen
in a temporary working directory: the configs are tested as written, paths included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_losses.callbacks import Distillation
from lightning_losses.tasks.classification import cli_main

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"
TEACHER_CKPT = Path("runs/distill_teacher/teacher.ckpt")
SHORT = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def _args(*configs: str) -> list[str]:
    args = []
    for name in ("classification.yaml", *configs):
        args += ["--config", str(CONFIGS / name)]
    return args


def _fit(*configs: str, extra: tuple[str, ...] = ()):
    return cli_main(["fit", *_args(*configs), *SHORT, "--test_after_fit", "false", *extra])


def _distillation(cli) -> Distillation:
    found = [c for c in cli.trainer.callbacks if isinstance(c, Distillation)]
    assert len(found) == 1
    return found[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory where the teacher config has run once."""
    root = tmp_path_factory.mktemp("distill")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli = _fit("distill_teacher.yaml")
        assert cli.model.hparams.backbone == "resnet10t"
        assert (root / TEACHER_CKPT).is_file()
        # the checkpoint callback writes that exact file, and a second run would overwrite it
        ckpt_cb = cli.trainer.checkpoint_callback
        assert Path(ckpt_cb.best_model_path).resolve() == (root / TEACHER_CKPT).resolve()
        (ckpt_config,) = cli.config.fit.trainer.callbacks
        assert ckpt_config.init_args.enable_version_counter is False
    return root


def test_student_distils_from_the_teacher_checkpoint(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    cli = _fit("distill_student.yaml", extra=("--trainer.log_every_n_steps", "1"))
    assert cli.model.hparams.backbone == "test_vit"
    assert type(cli.datamodule).__name__ == "DigitVariantsDataModule"
    cb = _distillation(cli)
    assert type(cb.loss).__name__ == "DKDLoss" and cb.loss.warmup == 1
    assert cb.teacher_forwards == 2  # one teacher forward per training batch

    # the teacher is the checkpoint's network: the "net." prefix was found and stripped
    (teacher,) = cb.teachers
    saved = torch.load(TEACHER_CKPT, map_location="cpu", weights_only=True)["state_dict"]
    expected = {k[len("net.") :]: v for k, v in saved.items() if k.startswith("net.")}
    got = teacher.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    # the teacher lives in the callback, not in the student's weights
    assert not any(k.startswith("teacher") for k in cli.model.state_dict())

    # the distillation term is in the run's log, next to the main term
    events = EventAccumulator(cli.trainer.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss/distill", "train/loss/cross_entropy"} <= tags
    distill = events.Scalars("train/loss/distill")
    assert distill and all(e.value > 0 for e in distill)


def test_student_alone_is_the_same_student_without_teacher(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    alone = cli_main(_args("student_alone.yaml"), run=False)
    student = cli_main(_args("distill_student.yaml"), run=False)
    assert alone.model.hparams.backbone == "test_vit"
    assert not any(isinstance(c, Distillation) for c in alone.trainer.callbacks)
    assert isinstance(_distillation(student), Distillation)
    assert dict(alone.model.hparams) == dict(student.model.hparams)
    assert alone.config.seed_everything == student.config.seed_everything
    assert alone.config.data == student.config.data


def test_class_count_mismatch_is_a_clear_error(workdir, monkeypatch):
    # the teacher learned the 10 digits; the spurious digits have 2 classes
    monkeypatch.chdir(workdir)
    with pytest.raises(ValueError, match="different numbers of classes") as err:
        _fit(
            "distill_student.yaml",
            extra=("--data.class_path", "lightning_losses.data.SpuriousDigitsDataModule"),
        )
    assert "10 classes" in str(err.value) and "student's 2" in str(err.value)


def test_missing_teacher_checkpoint_says_which_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no teacher has run here
    # jsonargparse validates the callback while parsing and wraps the callback's error; the
    # recipe prints the callback's own sentence and exits 2
    missing = "`teacher` file 'runs/distill_teacher/teacher.ckpt' does not exist"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(_args("distill_student.yaml"), run=False)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert missing in err and "Traceback" not in err


def test_feature_distillation_by_timm_feature_index_from_a_yaml_overlay(workdir, monkeypatch):
    # a resnet10t student's layer2/layer3 against the checkpoint teacher's levels 2 and 3 (its
    # layer2/layer3), read through forward_intermediates; YAML ints reach `teacher_layers`
    monkeypatch.chdir(workdir)
    overlay = workdir / "features.yaml"
    overlay.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning_losses.callbacks.Distillation\n"
        "      init_args:\n"
        "        teacher: runs/distill_teacher/teacher.ckpt\n"
        "        architecture: resnet10t\n"
        "        timm_kwargs: {in_chans: 1}\n"
        "        num_classes: 10\n"
        "        loss: attention_transfer\n"
        "        student_layers: [net.layer2, net.layer3]\n"
        "        teacher_layers: [2, 3]\n"
        "model:\n"
        "  backbone: resnet10t\n"
    )
    cli = _fit(str(overlay))
    cb = _distillation(cli)
    assert cb.teacher_layers == [2, 3]
    assert cb._teacher_reader is not None and cb._teacher_tap is None
    assert cb.teacher_forwards == 2

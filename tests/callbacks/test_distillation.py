"""``Distillation``: teachers from modules, files and timm; KD and feature terms; cache; DDP."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from lightning_losses import LossMixin, build_loss
from lightning_losses.callbacks._features import TimmIntermediates
from lightning_losses.callbacks.distillation import Distillation
from lightning_losses.losses.distillation import average_teacher_probs

N, D, K, B = 32, 6, 3, 8


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


class DictData(Dataset):
    """Fixed vectors (or images) with labels and their index: ``{"x", "y", "index"}``."""

    def __init__(self, n: int = N, shape: tuple[int, ...] = (D,), seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, *shape, generator=g)
        self.y = torch.randint(0, K, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "index": i}


def _loader(shape=(D,), shuffle=False, n=N) -> DataLoader:
    g = torch.Generator().manual_seed(7)
    return DataLoader(DictData(n, shape), batch_size=B, shuffle=shuffle, generator=g)


class Student(LossMixin, L.LightningModule):
    def __init__(self, k: int = K, lr: float = 0.05) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, k))
        self.criterion = build_loss("cross_entropy")
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch[0], batch[1])
        return self.compute_loss(self(x), y, batch=batch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class ConvStudent(Student):
    """Images (3, 8, 8): ``body.1`` gives a (4, 8, 8) map."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__(lr=lr)
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, K)),
        )


def conv_teacher(seed: int = 1, k: int = K) -> nn.Module:
    """Conv + BatchNorm + Dropout: layer ``"2"`` gives a (6, 8, 8) map."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, k),
    )
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net


def linear_teacher(seed: int = 1, k: int = K) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, k))


class Spy(Distillation):
    """Records what the term saw at every step."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("input_key", "x")  # the tests' mapping batches
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []

    def loss_terms(self, pl_module, outputs, target, batch):
        terms = super().loss_terms(pl_module, outputs, target, batch)
        values = terms[self.name].values
        values = values if isinstance(values, torch.Tensor) else values.values
        self.seen.append(
            {
                "x": batch["x"].clone() if isinstance(batch, dict) else batch[0].clone(),
                "outputs": outputs.detach().clone() if isinstance(outputs, torch.Tensor) else None,
                "values": values.detach().clone(),
                "teacher_training": [t.training for t in self.teachers],
                "student_training": pl_module.training,
            }
        )
        return terms


def _kd_by_hand(student_logits, teacher_logits, t=4.0):
    log_pt = torch.log_softmax(teacher_logits.double() / t, 1)
    log_ps = torch.log_softmax(student_logits.double() / t, 1)
    return t**2 * (log_pt.exp() * (log_pt - log_ps)).sum(1)


# ----------------------------------------------------------------------------- 1. the KD term


def test_default_term_is_kd_at_temperature_4_on_the_teachers_outputs():
    teacher = linear_teacher()
    reference = linear_teacher()  # an identical copy, never touched by the callback
    cb = Spy(teacher)
    assert cb.name == "distill" and cb.weight == 1.0 and cb.loss.temperature == 4.0
    trainer = _trainer(max_epochs=1, callbacks=[cb])
    trainer.fit(Student(), _loader())
    assert len(cb.seen) == N // B
    for step in cb.seen:
        expected = _kd_by_hand(step["outputs"], reference(step["x"]).detach())
        torch.testing.assert_close(step["values"].double(), expected, rtol=1e-4, atol=1e-5)
    assert "train/loss/distill" in trainer.callback_metrics
    assert cb.teacher_forwards == N // B


def test_weight_and_loss_kwargs_reach_the_term():
    cb = Spy(linear_teacher(), loss="kd", weight=0.9, loss_kwargs={"temperature": 2.0})
    trainer = _trainer(max_epochs=1, callbacks=[cb])
    trainer.fit(Student(), _loader())
    step = cb.seen[0]
    expected = _kd_by_hand(step["outputs"], linear_teacher()(step["x"]).detach(), t=2.0)
    torch.testing.assert_close(step["values"].double(), expected, rtol=1e-4, atol=1e-5)
    assert trainer.callback_metrics["train/loss/distill"] > 0
    built = Distillation(linear_teacher(), loss=build_loss("kd", temperature=2.0))
    assert built.loss.temperature == 2.0


def test_dkd_receives_the_epoch_and_tuple_batches_work():
    data = DictData()
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=B)
    cb = Spy(linear_teacher(), loss="dkd", loss_kwargs={"warmup": 2}, input_key=0)
    _trainer(max_epochs=2, callbacks=[cb]).fit(Student(), loader)
    dkd = build_loss("dkd", warmup=2)
    last = cb.seen[-1]  # epoch 1: warm-up factor 1
    y = data.y[-B:]
    expected = dkd.per_sample(
        last["outputs"], y, teacher_logits=linear_teacher()(last["x"]).detach(), epoch=1
    ).values
    torch.testing.assert_close(last["values"], expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- 2. frozen teacher


def test_teacher_is_frozen_in_eval_and_bit_for_bit_unchanged():
    teacher = conv_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cb = Spy(teacher, student_layers="net.0.1", teacher_layers="2", loss="fitnet")
    kd = Spy(conv_teacher(), name="kd")
    student = ConvStudent()
    trainer = _trainer(max_epochs=2, callbacks=[cb, kd])
    trainer.fit(student, _loader(shape=(3, 8, 8)))

    for key, value in teacher.state_dict().items():  # BatchNorm buffers included
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(step["student_training"] for step in cb.seen + kd.seen)
    assert not any(any(step["teacher_training"]) for step in cb.seen + kd.seen)
    # the teacher lives in the callback: not in the student's state, nor its optimizer
    teacher_ids = {id(p) for p in teacher.parameters()}
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not teacher_ids & optimized
    assert not teacher_ids & {id(p) for p in student.parameters()}
    assert not any(k.startswith(("teacher", "_teacher")) for k in student.state_dict())


def test_teacher_put_back_in_eval_at_each_batch_start():
    teacher = conv_teacher()

    class TrainsTheTeacher(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            teacher.train()  # e.g. a user's code touching the shared module

    cb = Spy(teacher)
    _trainer(max_epochs=1, callbacks=[TrainsTheTeacher(), cb]).fit(
        ConvStudent(), _loader(shape=(3, 8, 8))
    )
    assert not any(any(step["teacher_training"]) for step in cb.seen)


# ----------------------------------------------------------------------------- 3. adapters


def test_adapters_are_built_before_the_optimizer_trained_and_checkpointed():
    cb = Spy(conv_teacher(), loss="fitnet", student_layers="net.0.1", teacher_layers="2")
    student = ConvStudent()

    seen = {}

    class PeekOptimizer(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            adapter = pl_module.distill_adapters["distill"]["pair0"]
            seen["initial"] = {k: v.clone() for k, v in adapter.state_dict().items()}
            params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
            seen["in_optimizer"] = all(id(p) in params for p in adapter.parameters())

    trainer = _trainer(max_epochs=2, callbacks=[cb, PeekOptimizer()])
    trainer.fit(student, _loader(shape=(3, 8, 8)))

    adapter = student.distill_adapters["distill"]["pair0"]
    assert isinstance(adapter, nn.Conv2d)
    assert (adapter.in_channels, adapter.out_channels, adapter.kernel_size) == (4, 6, (1, 1))
    assert seen["in_optimizer"]
    assert not torch.equal(adapter.weight, seen["initial"]["weight"])  # it trained
    keys = set(student.state_dict())
    assert {"distill_adapters.distill.pair0.weight", "distill_adapters.distill.pair0.bias"} <= keys
    assert cb.teacher_forwards == 2 * N // B  # the dry run is not counted
    # the feature hooks are gone once fit ends
    assert not student.net[0][1]._forward_hooks and not cb.teachers[0][2]._forward_hooks


def _resume_run(ckpt=None, epochs=2):
    cb = Spy(conv_teacher(), loss="fitnet", student_layers="net.0.1", teacher_layers="2")
    model = ConvStudent(lr=0.02)
    trainer = _trainer(max_epochs=epochs, callbacks=[cb])
    trainer.fit(model, _loader(shape=(3, 8, 8)), ckpt_path=ckpt)
    return trainer, model


def test_resume_from_a_mid_training_checkpoint_matches_an_uninterrupted_run(tmp_path):
    _, full = _resume_run(epochs=2)
    first, _ = _resume_run(epochs=1)
    path = tmp_path / "mid.ckpt"
    first.save_checkpoint(path)
    _, resumed = _resume_run(ckpt=path, epochs=2)
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert set(full_state) == set(resumed_state)
    assert any(k.startswith("distill_adapters.") for k in full_state)
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=0)


def test_shape_free_losses_need_no_adapter_and_unknown_layers_are_named():
    cb = Spy(
        conv_teacher(), loss="attention_transfer", student_layers="net.0.1", teacher_layers="2"
    )
    student = ConvStudent()
    _trainer(max_epochs=1, callbacks=[cb]).fit(student, _loader(shape=(3, 8, 8)))
    assert not hasattr(student, "distill_adapters")
    assert torch.isfinite(cb.seen[-1]["values"]).all()

    bad = Spy(conv_teacher(), loss="fitnet", student_layers="net.0.l", teacher_layers="2")
    with pytest.raises(ValueError, match=r"`student_layers` names 'net.0.l'.*Close matches.*net.0"):
        _trainer(max_epochs=1, callbacks=[bad]).fit(ConvStudent(), _loader(shape=(3, 8, 8)))
    bad = Spy(conv_teacher(), loss="fitnet", student_layers="net.0.1", teacher_layers="9")
    with pytest.raises(ValueError, match=r"`teacher_layers` names '9'.*Available"):
        _trainer(max_epochs=1, callbacks=[bad]).fit(ConvStudent(), _loader(shape=(3, 8, 8)))


# ----------------------------------------------------------------------------- 4. cache


def _cache_run(cache: bool):
    cb = Spy(conv_teacher(), cache=cache)
    model = ConvStudent()
    _trainer(max_epochs=3, callbacks=[cb]).fit(model, _loader(shape=(3, 8, 8), shuffle=True))
    return cb, model


def test_cache_runs_the_teacher_in_the_first_epoch_only_with_the_same_loss():
    cached, cached_model = _cache_run(True)
    plain, plain_model = _cache_run(False)
    batches = N // B
    assert cached.teacher_forwards == batches
    assert plain.teacher_forwards == 3 * batches
    for a, b in zip(cached.seen, plain.seen, strict=True):
        torch.testing.assert_close(a["values"], b["values"], rtol=0, atol=0)
    for key, value in plain_model.state_dict().items():
        torch.testing.assert_close(cached_model.state_dict()[key], value, rtol=0, atol=0)
    assert len(cached._cache) == N and all(
        v.device.type == "cpu" for e in cached._cache.values() for v in e.values()
    )


def test_cache_needs_sample_indices():
    data = DictData()
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=B)
    cb = Spy(linear_teacher(), cache=True, input_key=0)
    with pytest.raises(ValueError, match="index_key"):
        _trainer(max_epochs=1, callbacks=[cb]).fit(Student(), loader)


# ----------------------------------------------------------------------------- 5. loading


class TeacherModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = conv_teacher(seed=3)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_checkpoint_and_state_dict_files_give_the_original_teacher(tmp_path):
    lm = TeacherModule()
    trainer = _trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(lm, _loader(shape=(3, 8, 8)))
    ckpt = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(ckpt)
    plain = tmp_path / "teacher.pt"
    torch.save(lm.model.state_dict(), plain)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in lm.model.state_dict().items()}, prefixed)

    x = torch.randn(5, 3, 8, 8)
    original = lm.model.eval()(x)
    for path, prefix in ((ckpt, None), (plain, None), (prefixed, "backbone."), (prefixed, None)):
        cb = Distillation(str(path), architecture=conv_teacher(seed=9), state_dict_prefix=prefix)
        (teacher,) = cb.teachers
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        torch.testing.assert_close(teacher(x), original, rtol=0, atol=0)

    with pytest.raises(ValueError, match="state_dict_prefix"):
        Distillation(str(prefixed), architecture=conv_teacher(), state_dict_prefix="model.")
    with pytest.raises(ValueError, match="architecture"):
        Distillation(str(plain))
    with pytest.raises(FileNotFoundError):
        Distillation(str(tmp_path / "missing.ckpt"), architecture=conv_teacher())


class _Custom:
    pass


def test_an_unsafe_pickle_file_is_refused_with_how_to_resave(tmp_path):
    for i, obj in enumerate(
        (nn.Linear(2, 2), {"state_dict": {"w": torch.ones(1)}, "x": _Custom()})
    ):
        path = tmp_path / f"unsafe{i}.pt"
        torch.save(obj, path)
        with pytest.raises(ValueError, match=r"arbitrary unpickling.*state_dict") as info:
            Distillation(str(path), architecture=nn.Linear(2, 2))
        assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_timm_teacher_by_name_checkpoint_and_weights_file(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=K).eval()
    sd = tmp_path / "r10t.pth"
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, sd)
    x = torch.randn(2, 3, 32, 32)
    expected = net(x)
    from_ckpt = Distillation(str(sd), architecture="resnet10t", num_classes=K).teachers[0]
    from_name = Distillation("resnet10t", num_classes=K, weights=str(sd)).teachers[0]
    for teacher in (from_ckpt, from_name):
        torch.testing.assert_close(teacher(x), expected, rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"resnet1000t.*Close matches.*resnet10"):
        Distillation("resnet1000t", num_classes=K)


class ImageStudent(Student):
    """(3, 32, 32) images; ``net.1`` gives an (8, 8, 8) map, the size of resnet10t's layer1."""

    num_classes = K

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=4, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, K),
        )


def test_timm_teacher_feature_distillation_reads_the_class_count_from_the_module():
    cb = Spy("resnet10t", loss="fitnet", student_layers="net.1", teacher_layers="layer1")
    kd = Spy("resnet10t", name="kd", compile={"backend": "eager"})
    student = ImageStudent()
    _trainer(max_epochs=1, callbacks=[cb, kd]).fit(student, _loader(shape=(3, 32, 32), n=B))
    assert cb.teachers[0].num_classes == K
    adapter = student.distill_adapters["distill"]["pair0"]
    assert (adapter.in_channels, adapter.out_channels) == (
        8,
        cb.teachers[0].layer1[-1].conv2.out_channels,
    )
    assert all(torch.isfinite(s["values"]).all() for s in cb.seen + kd.seen)


def test_timm_feature_indices_read_forward_intermediates_and_skip_the_head():
    torch.manual_seed(3)
    teacher = timm.create_model("resnet10t", pretrained=False, num_classes=K)
    head_calls, layer2_calls = [], []
    teacher.fc.register_forward_hook(lambda *a: head_calls.append(1))
    teacher.layer2.register_forward_hook(lambda *a: layer2_calls.append(1))
    # index 1 of resnet10t's feature_info is layer1, and -4 the same level from the end;
    # attention transfer needs no adapter, so equal features give equal terms
    common = dict(loss="attention_transfer", student_layers="net.1")
    by_name = Spy(teacher, teacher_layers="layer1", name="a", **common)
    by_index = Spy(teacher, teacher_layers=1, name="b", **common)
    from_end = Spy(teacher, teacher_layers=[-4], name="c", **common)
    _trainer(max_epochs=1, callbacks=[by_name, by_index, from_end]).fit(
        ImageStudent(), _loader(shape=(3, 32, 32), n=2 * B)
    )
    assert by_name.teacher_forwards == by_index.teacher_forwards == 2
    for a, b, c in zip(by_name.seen, by_index.seen, from_end.seen, strict=True):
        assert torch.isfinite(a["values"]).all() and a["values"].abs().sum() > 0
        torch.testing.assert_close(b["values"], a["values"], rtol=0, atol=0)
        torch.testing.assert_close(c["values"], a["values"], rtol=0, atol=0)
    # only the hooked run went through layer2 and the head: the indexed runs stopped at layer1
    assert len(head_calls) == len(layer2_calls) == by_name.teacher_forwards


def test_timm_intermediates_come_in_the_order_asked_as_the_hooks_see_them():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=K).eval()
    seen = {}
    for name in ("layer1", "layer2", "layer4"):
        getattr(model, name).register_forward_hook(
            lambda m, a, out, name=name: seen.__setitem__(name, out)
        )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        feats = TimmIntermediates(model, [2, 1, -1], "teacher_layers")(x)
    for f, name in zip(feats, ("layer2", "layer1", "layer4"), strict=True):
        torch.testing.assert_close(f, seen[name], rtol=0, atol=0)


def test_feature_index_errors_name_the_levels_or_the_missing_method():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=K)
    with pytest.raises(ValueError, match=r"index 7.*5 feature levels.*0: act1.*4: layer4"):
        TimmIntermediates(model, [1, 7], "teacher_layers")
    with pytest.raises(ValueError, match=r"index -6.*-5 to -1"):
        TimmIntermediates(model, [-6], "teacher_layers")
    plain = Spy(conv_teacher(), loss="fitnet", student_layers="net.0.1", teacher_layers=2)
    with pytest.raises(ValueError, match=r"`teacher_layers`.*forward_intermediates.*Sequential"):
        _trainer(max_epochs=1, callbacks=[plain]).fit(ConvStudent(), _loader(shape=(3, 8, 8)))
    with pytest.raises(TypeError, match=r"all module names.*or all timm feature indices"):
        Distillation(model, loss="fitnet", student_layers=["a", "b"], teacher_layers=["layer1", 2])
    with pytest.raises(TypeError, match=r"`student_layers` must hold module names"):
        Distillation(model, loss="fitnet", student_layers=1, teacher_layers=1)


# ----------------------------------------------------------------------------- 6. several teachers


def test_several_teachers_are_averaged_in_probability():
    teachers = [linear_teacher(1), linear_teacher(2)]
    cb = Spy(teachers)
    multi = Spy([linear_teacher(1), linear_teacher(2)], loss="multi_teacher_kd", name="multi")
    _trainer(max_epochs=1, callbacks=[cb, multi]).fit(Student(), _loader())
    for step, mstep in zip(cb.seen, multi.seen, strict=True):
        logits = [t(step["x"]).detach() for t in (linear_teacher(1), linear_teacher(2))]
        p_bar = average_teacher_probs(logits, temperature=4.0).double()
        log_ps = torch.log_softmax(step["outputs"].double() / 4.0, 1)
        expected = 16.0 * (p_bar * (p_bar.log() - log_ps)).sum(1)
        torch.testing.assert_close(step["values"].double(), expected, rtol=1e-4, atol=1e-5)
        by_hand = sum(_kd_by_hand(step["outputs"], z) for z in logits) / 2
        torch.testing.assert_close(mstep["values"].double(), by_hand, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- 7. errors


def test_errors_are_clear():
    wrong_classes = Spy(linear_teacher(k=K + 2))
    with pytest.raises(ValueError, match=rf"teacher's logits have {K + 2} classes.*student's {K}"):
        _trainer(max_epochs=1, callbacks=[wrong_classes]).fit(Student(), _loader())

    with pytest.raises(ValueError, match="temperature"):
        Distillation(linear_teacher(), loss_kwargs={"temperature": 0.0})
    with pytest.raises(ValueError, match="temperature"):
        Distillation(linear_teacher(), loss_kwargs={"temperature": -1.0})

    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(D, K)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch["x"]), batch["y"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="LossMixin"):
        _trainer(max_epochs=1, callbacks=[Spy(linear_teacher())]).fit(Plain(), _loader())

    with pytest.raises(ValueError, match="distillation loss"):
        Distillation(linear_teacher(), loss="focal")
    with pytest.raises(ValueError, match="feature loss"):
        Distillation(linear_teacher(), student_layers="net.0", teacher_layers="0")
    with pytest.raises(ValueError, match="go together"):
        Distillation(linear_teacher(), loss="fitnet", student_layers="net.0")
    with pytest.raises(ValueError, match="input_key"):
        _trainer(max_epochs=1, callbacks=[Distillation(linear_teacher(), input_key="image")]).fit(
            Student(), _loader()
        )
    with pytest.raises(ValueError, match="num_classes"):
        _trainer(max_epochs=1, callbacks=[Spy("resnet10t")]).fit(Student(), _loader())


# ----------------------------------------------------------------------------- 8. precision


def test_bf16_mixed_on_cpu_trains_with_a_finite_term():
    cb = Spy(conv_teacher())
    feat = Spy(
        conv_teacher(), loss="fitnet", student_layers="net.0.1", teacher_layers="2", name="f"
    )
    _trainer(max_epochs=1, precision="bf16-mixed", callbacks=[cb, feat]).fit(
        ConvStudent(), _loader(shape=(3, 8, 8))
    )
    assert cb.teachers[0][0].weight.dtype == torch.float32  # mixed: fp32 weights, autocast
    for step in cb.seen + feat.seen:
        assert torch.isfinite(step["values"]).all()

    true_bf16 = Spy(linear_teacher())
    _trainer(max_epochs=1, precision="bf16-true", callbacks=[true_bf16]).fit(Student(), _loader())
    assert true_bf16.teachers[0][0].weight.dtype == torch.bfloat16  # the student's dtype
    assert all(torch.isfinite(step["values"]).all() for step in true_bf16.seen)


class DoubleConvStudent(ConvStudent):
    """A float64 student: inputs are cast to its dtype in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.double()

    def forward(self, x):
        return self.net(x.double())


def test_a_float64_student_gets_float64_teachers_and_adapters():
    feat = Spy(conv_teacher(), loss="fitnet", student_layers="net.0.1", teacher_layers="2")
    student = DoubleConvStudent()
    _trainer(max_epochs=1, callbacks=[feat]).fit(student, _loader(shape=(3, 8, 8)))
    assert feat.teachers[0][0].weight.dtype == torch.float64
    adapters = [p for n, p in student.named_parameters() if "adapter" in n.lower()]
    assert adapters and all(p.dtype == torch.float64 for p in adapters)
    assert feat.seen and all(torch.isfinite(step["values"]).all() for step in feat.seen)


# ----------------------------------------------------------------------------- 9. DDP


class RoundRobinData(L.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        data = DictData(N, (3, 8, 8), seed=5)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


def _ddp_train(devices: int, batch_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)  # the adapters' initialisation (DDP broadcasts rank 0's)
    model = ConvStudent(lr=0.02)
    callbacks = [
        Distillation(conv_teacher(), name="kd", input_key="x"),
        Distillation(
            conv_teacher(),
            loss="fitnet",
            student_layers="net.0.1",
            teacher_layers="2",
            input_key="x",
        ),
    ]
    trainer = _trainer(
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=callbacks,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=RoundRobinData(batch_size))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_match_one_process_with_the_same_global_batch():
    single = _ddp_train(devices=1, batch_size=2 * B)
    ddp = _ddp_train(devices=2, batch_size=B)
    initial = ConvStudent().state_dict()
    assert not torch.equal(single["net.0.0.weight"], initial["net.0.0.weight"])
    # under ddp_spawn the main process gets the student's weights back without the adapters
    for key, value in ddp.items():
        torch.testing.assert_close(value, single[key], rtol=1e-4, atol=1e-5)


def test_weights_of_another_class_count_get_an_explained_error(tmp_path):
    from lightning_losses.callbacks._teachers import parse_teacher

    path = tmp_path / "teacher.pt"
    torch.save(nn.Linear(4, 3).state_dict(), path)
    source = parse_teacher(path, architecture=nn.Linear(4, 2))
    with pytest.raises(
        ValueError, match=r"(?s)do not fit the architecture.*another number of classes"
    ):
        source.build()


def test_an_unknown_loss_gets_suggestions_from_the_distillation_family():
    with pytest.raises(ValueError, match=r"unknown distillation loss name 'dkdd'.*'dkd'") as err:
        Distillation(teacher=nn.Linear(2, 2), loss="dkdd")
    assert "focal" not in str(err.value)
    with pytest.raises(ValueError, match=r"'focal' is a classification loss"):
        Distillation(teacher=nn.Linear(2, 2), loss="focal")

r"""The diffusion task: a diffusers ``UNet2DModel`` trained with the library's diffusion losses.

``DiffusionModule`` is a plain ``LightningModule`` with :class:`~lightning_losses.LossMixin`.
Its loss is a registered diffusion loss (``"diffusion"``, ``"diffusion_pseudo_huber"``,
``"diffusion_cauchy"``) built on the schedule of a diffusers ``DDPMScheduler`` (ε-, v- or
x₀-prediction) or on EDM's continuous σ; the training step draws the timesteps
(:func:`~lightning_losses.diffusion.sample_timesteps`, EDM:
:func:`~lightning_losses.diffusion.sample_edm_sigma`), applies the noise tweaks (offset noise,
input perturbation) and hands the timesteps to the loss as batch context. The loss is logged
per timestep bucket (``{stage}/loss_t{b}``). The weights are averaged by Lightning's own
``EMAWeightAveraging`` callback (validation and test see the average). At the end of
validation and test, images are sampled with a diffusers scheduler (DDIM by default; EDM's
Euler sampler for EDM) and scored by :class:`~lightning_losses.metrics.sample_quality.
SampleQuality`; the test report compares them with an untrained model of the same
architecture, Gaussian noise and the real test images, printed as one table and written as
``test_metrics.json``, ``test_samples.png`` and ``test_loss_by_timestep.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_positive
from ..callbacks.infobatch import estimated_stepping_batches
from ..diffusion.bucket_metric import TimestepBucketLoss
from ..diffusion.noise import (
    TIMESTEP_DENSITIES,
    offset_noise,
    perturb_noise,
    sample_edm_sigma,
    sample_timesteps,
)
from ..diffusion.weighting import edm_preconditioning
from ..losses.diffusion import DiffusionLoss
from ..mixins import LossMixin
from ..registry import build_loss, list_losses
from .recipe_cli import RecipeCLI, run_recipe_cli
from .report import print_report

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "edm")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SAMPLERS = ("ddim", "ddpm", "euler", "dpm")
#: The rows of the test report, in order.
REPORT_SOURCES = ("samples", "untrained model", "gaussian noise", "real (test split)")


def _diffusers_sampler(name: str, config: Mapping[str, Any]) -> Any:
    import diffusers

    classes = {
        "ddim": diffusers.DDIMScheduler,
        "ddpm": diffusers.DDPMScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "dpm": diffusers.DPMSolverMultistepScheduler,
    }
    return classes[name].from_config(config)


class DiffusionModule(LossMixin, L.LightningModule):
    """Image diffusion with a diffusers ``UNet2DModel`` and a registered diffusion loss.

    Batches are mappings ``{"image": (N, C, S, S) in [-1, 1], "label": (N,), ...}``, as
    :class:`~lightning_losses.data.diffusion_datamodule.DiffusionImagesDataModule` gives them.

    Args:
        image_size, in_chans, num_classes: filled from the datamodule by the recipe's CLI.
        block_out_channels: channels of each U-Net level (its length is the number of levels;
            ``image_size`` must be divisible by 2^(levels-1)). (32, 64) by default: 0.65 M
            parameters, two levels at 8x8 and 4x4.
        layers_per_block: ResNet blocks per level; 1.
        mid_attention: self-attention in the U-Net's middle block; True (diffusers' default).
        norm_num_groups: GroupNorm groups; 8 (must divide every channel count).
        class_conditional: condition on the class label (one learned embedding per class
            plus a "no label" embedding); False trains an unconditional model.
        label_dropout: probability of replacing a training label by "no label", so one model
            learns both and classifier-free guidance is possible; 0.1.
        guidance_scale: classifier-free guidance weight w at sampling,
            :math:`\\hat y = \\hat y_\\varnothing + w(\\hat y_c - \\hat y_\\varnothing)`; 1 = no
            guidance (one network call per step).
        loss: a registered diffusion loss (``lightning-losses list --family diffusion``).
        prediction_type: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` (x₀) or ``"edm"``.
        loss_kwargs: further options of the loss (``weighting``, ``min_snr_gamma``, ``c``,
            ``c_schedule``, ...).
        beta_schedule, num_train_timesteps, zero_terminal_snr: the ``DDPMScheduler`` whose
            schedule the loss reads and the sampler uses (ε/v/x₀ only).
        timestep_density: ``"uniform"``, ``"logit_normal"`` or ``"mode"`` (SD3); ε/v/x₀ only.
        offset_noise: strength o of offset noise; 0 = off.
        input_perturbation: strength g of input perturbation (ε/v/x₀ only); 0 = off.
        edm_p_mean, edm_p_std, sigma_data: EDM's σ density and data scale (-1.2, 1.2, 0.5).
        sampler: ``"ddim"`` (default), ``"ddpm"``, ``"euler"`` or ``"dpm"`` (DPM-Solver++);
            EDM always samples with diffusers' ``EDMEulerScheduler``.
        sampler_steps: sampling steps; 25.
        num_samples: images sampled for the test report; 500.
        val_samples: images sampled at the end of each validation (0 = none); 100.
        num_buckets: timestep buckets of the per-bucket loss; 10.
        ema_decay: decay of the exponential moving average of the weights; 0 or None = off.
            0.995 (a half-life of about 140 steps): a short run needs a short memory, since
            after n steps the average still holds decay^n of the initial weights (0.999 keeps
            40 % of them after the default run's 920 steps).
        lr, weight_decay, warmup_steps: AdamW with a linear warm-up and a cosine decay.
        quality_cache_dir: where the sample-quality classifier is cached; None = the
            trainer's ``default_root_dir``.
        classifier_epochs: training epochs of the sample-quality classifier; 50.
        sample_seed: seed of the sampling noise (the same starting noise in every run).
    """

    def __init__(
        self,
        image_size: int = 8,
        in_chans: int = 1,
        num_classes: int = 10,
        block_out_channels: Sequence[int] = (32, 64),
        layers_per_block: int = 1,
        mid_attention: bool = True,
        norm_num_groups: int = 8,
        class_conditional: bool = True,
        label_dropout: float = 0.1,
        guidance_scale: float = 1.0,
        loss: str = "diffusion",
        prediction_type: str = "epsilon",
        loss_kwargs: dict[str, Any] | None = None,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        timestep_density: str = "uniform",
        offset_noise: float = 0.0,
        input_perturbation: float = 0.0,
        edm_p_mean: float = -1.2,
        edm_p_std: float = 1.2,
        sigma_data: float = 0.5,
        sampler: str = "ddim",
        sampler_steps: int = 25,
        num_samples: int = 500,
        val_samples: int = 100,
        num_buckets: int = 10,
        ema_decay: float | None = 0.995,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        quality_cache_dir: str | None = None,
        classifier_epochs: int = 50,
        sample_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        check_choice(prediction_type, PREDICTION_TYPES, "prediction_type")
        check_choice(beta_schedule, BETA_SCHEDULES, "beta_schedule")
        check_choice(timestep_density, TIMESTEP_DENSITIES, "timestep_density")
        check_choice(sampler, SAMPLERS, "sampler")
        check_int(sampler_steps, "sampler_steps", 1)
        check_int(num_samples, "num_samples", 2)
        check_int(val_samples, "val_samples", 0)
        check_int(num_buckets, "num_buckets", 1)
        check_int(classifier_epochs, "classifier_epochs", 1)
        check_positive(offset_noise, "offset_noise", allow_zero=True)
        check_positive(input_perturbation, "input_perturbation", allow_zero=True)
        check_positive(guidance_scale, "guidance_scale", allow_zero=True)
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"`label_dropout` must lie in [0, 1); got {label_dropout!r}.")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1) (or be null); got {ema_decay!r}.")
        self.edm = prediction_type == "edm"
        if self.edm and input_perturbation > 0:
            raise ValueError(
                "`input_perturbation` is defined for ε/v/x₀ prediction on a discrete schedule; "
                "got it with `prediction_type='edm'`."
            )
        levels = len(block_out_channels)
        if levels < 1 or image_size % 2 ** (levels - 1):
            raise ValueError(
                f"`image_size` ({image_size}) must be divisible by 2^(levels - 1) = "
                f"{2 ** max(levels - 1, 0)} for a U-Net with `block_out_channels` "
                f"{list(block_out_channels)}."
            )
        if guidance_scale != 1.0 and not class_conditional:
            raise ValueError(
                "`guidance_scale` other than 1 needs `class_conditional: true` (classifier-free "
                "guidance mixes the conditional and unconditional predictions)."
            )
        self.net = self.build_unet()
        self.criterion = self._build_loss()
        schedule_steps = num_buckets if self.edm else self.criterion.schedule.num_timesteps
        self._bucket_steps = schedule_steps
        self.train_buckets = TimestepBucketLoss(schedule_steps, num_buckets)
        self.val_buckets = TimestepBucketLoss(schedule_steps, num_buckets)
        self.test_buckets = TimestepBucketLoss(schedule_steps, num_buckets)
        self.bucket_curves: dict[str, list[float]] = {}
        self.reports: dict[str, Any] = {}

    # -- construction ------------------------------------------------------------------------

    def build_unet(self) -> Any:
        """A fresh, untrained ``UNet2DModel`` of this module's configuration."""
        from diffusers import UNet2DModel

        hp = self.hparams
        levels = len(hp.block_out_channels)
        return UNet2DModel(
            sample_size=hp.image_size,
            in_channels=hp.in_chans,
            out_channels=hp.in_chans,
            block_out_channels=tuple(hp.block_out_channels),
            layers_per_block=hp.layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            add_attention=hp.mid_attention,
            attention_head_dim=min(hp.block_out_channels[-1], 32),
            norm_num_groups=hp.norm_num_groups,
            num_class_embeds=hp.num_classes + 1 if hp.class_conditional else None,
        )

    def train_scheduler(self) -> Any:
        """The ``DDPMScheduler`` of the schedule (ε/v/x₀), or EDM's Euler scheduler."""
        import diffusers

        hp = self.hparams
        if self.edm:
            return diffusers.EDMEulerScheduler(sigma_data=hp.sigma_data)
        return diffusers.DDPMScheduler(
            num_train_timesteps=hp.num_train_timesteps,
            beta_schedule=hp.beta_schedule,
            prediction_type=hp.prediction_type,
            rescale_betas_zero_snr=hp.zero_terminal_snr,
            timestep_spacing="trailing" if hp.zero_terminal_snr else "leading",
            clip_sample=True,
        )

    def _build_loss(self) -> DiffusionLoss:
        hp = self.hparams
        names = list_losses("diffusion")
        check_choice(hp.loss, names, "loss")
        kwargs = dict(hp.loss_kwargs or {})
        for key in ("scheduler", "prediction_type", "alphas_cumprod", "sigmas", "reduction"):
            if key in kwargs:
                raise ValueError(
                    f"`loss_kwargs` must not set {key!r}: the module sets it (use the module's "
                    "`prediction_type` and schedule options)."
                )
        if self.edm:
            kwargs.setdefault("sigma_data", hp.sigma_data)
            return build_loss(hp.loss, prediction_type="edm", **kwargs)
        return build_loss(
            hp.loss, scheduler=self.train_scheduler(), prediction_type=hp.prediction_type, **kwargs
        )

    def configure_callbacks(self) -> list[Any]:
        from lightning.pytorch.callbacks import WeightAveraging

        decay = self.hparams.ema_decay
        if not decay or any(isinstance(cb, WeightAveraging) for cb in self.trainer.callbacks):
            return []
        from lightning.pytorch.callbacks import EMAWeightAveraging

        return [EMAWeightAveraging(decay=decay)]

    # -- the network and the training step ---------------------------------------------------

    def forward(self, x: Tensor, timesteps: Tensor, labels: Tensor | None = None) -> Tensor:
        """The raw network output for noisy ``x`` at ``timesteps`` (EDM: σ, preconditioned)."""
        if self.edm:
            _, _, c_in, c_noise = edm_preconditioning(timesteps, self.hparams.sigma_data)
            x = x * c_in.view(-1, *[1] * (x.ndim - 1))
            timesteps = c_noise
        return self.net(x, timesteps, class_labels=labels).sample

    def _labels(self, batch: Mapping[str, Any], drop: bool) -> Tensor | None:
        if not self.hparams.class_conditional:
            return None
        labels = torch.as_tensor(batch["label"], device=self.device).long()
        if drop and self.hparams.label_dropout > 0:
            keep = torch.rand(labels.shape, device=labels.device) >= self.hparams.label_dropout
            labels = torch.where(keep, labels, torch.full_like(labels, self.hparams.num_classes))
        return labels

    def _noisy_batch(
        self, x0: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_t, timesteps, target, bucket ids)`` for clean ``x0``.

        Training draws on ``x0``'s device; evaluation passes a seeded CPU ``generator`` (the
        same noise and timesteps in every run) and the draws are moved to the device.
        """
        hp = self.hparams
        n = x0.shape[0]
        draw_on = "cpu" if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=draw_on, dtype=x0.dtype)
        noise = offset_noise(noise, hp.offset_noise, generator=generator).to(x0.device)
        if self.edm:
            sigma = sample_edm_sigma(
                n, hp.edm_p_mean, hp.edm_p_std, generator=generator, device=draw_on
            ).to(x0.device, x0.dtype)
            x_t = x0 + sigma.view(-1, *[1] * (x0.ndim - 1)) * noise
            target = self.criterion.training_target(x0, noise, sigma)
            # equal-probability buckets of the training density of ln σ
            u = torch.special.ndtr((sigma.log() - hp.edm_p_mean) / hp.edm_p_std)
            buckets = (u * hp.num_buckets).long().clamp(0, hp.num_buckets - 1)
            return x_t, sigma, target, buckets
        t = sample_timesteps(
            n,
            self.criterion.schedule.num_timesteps,
            hp.timestep_density,
            generator=generator,
            device=draw_on,
        ).to(x0.device)
        # input perturbation: x_t sees ε + g·ξ', the target stays ε
        noisy = perturb_noise(noise.to(draw_on), hp.input_perturbation, generator=generator)
        x_t = self.criterion.add_noise(x0, noisy.to(x0.device), t)
        return x_t, t, self.criterion.training_target(x0, noise, t), t

    def _step(self, batch: Mapping[str, Any], stage: str, buckets: TimestepBucketLoss, gen=None):
        x0 = batch["image"]
        x_t, t, target, bucket_ids = self._noisy_batch(x0, gen)
        pred = self(x_t, t, self._labels(batch, drop=stage == "train"))
        loss = self.compute_loss(pred, target, batch={**batch, "timesteps": t}, stage=stage)
        with torch.no_grad():
            per_sample = self.criterion.sample_losses(pred.detach(), target, timesteps=t).values
        buckets.update(per_sample, bucket_ids)
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_buckets)

    def _eval_generator(self, batch_idx: int) -> torch.Generator:
        # the same noise and timesteps for every evaluation: val/test losses compare across runs
        return torch.Generator().manual_seed(10_000 + batch_idx)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "val", self.val_buckets, self._eval_generator(batch_idx))
        # Sampled inside the last step: the weight-averaging callback swaps the average back out
        # before the module's `on_validation_epoch_end` runs.
        last = batch_idx == self.trainer.num_val_batches[0] - 1
        if last and not self.trainer.sanity_checking and self.hparams.val_samples > 0:
            self._val_quality = self._score(self.hparams.val_samples, steps=None)

    def on_train_epoch_end(self) -> None:
        self._log_buckets("train", self.train_buckets)

    def on_validation_epoch_end(self) -> None:
        self._log_buckets("val", self.val_buckets)
        quality = self.__dict__.pop("_val_quality", None)
        if quality is not None:
            for key in ("fid", "kid", "confident_fraction", "class_entropy", "label_agreement"):
                if key in quality:
                    self.log(f"val/{key}", quality[key], prog_bar=key == "fid")
            self.reports["val"] = quality

    def _log_buckets(self, stage: str, metric: TimestepBucketLoss) -> None:
        if self.trainer.sanity_checking:
            metric.reset()
            return
        self.bucket_curves[stage] = [float(v) for v in metric.compute()]
        self.log_dict(metric.as_dict(f"{stage}/loss_t"))
        metric.reset()

    # -- sampling ----------------------------------------------------------------------------

    def sampler(self) -> Any:
        """A diffusers scheduler for sampling from this model."""
        config = self.train_scheduler().config
        if self.edm:
            import diffusers

            return diffusers.EDMEulerScheduler.from_config(config)
        return _diffusers_sampler(self.hparams.sampler, config)

    @torch.no_grad()
    def sample(
        self,
        num: int,
        labels: Tensor | None = None,
        *,
        steps: int | None = None,
        seed: int | None = None,
        net: Any = None,
    ) -> Tensor:
        """``num`` images (num, C, S, S) in [-1, 1]; ``labels`` (num,) for a class-conditional
        model (None: unconditional); ``net`` another U-Net of the same configuration."""
        hp = self.hparams
        net = self.net if net is None else net
        scheduler = self.sampler()
        scheduler.set_timesteps(steps or hp.sampler_steps, device=self.device)
        generator = torch.Generator().manual_seed(hp.sample_seed if seed is None else seed)
        shape = (num, hp.in_chans, hp.image_size, hp.image_size)
        x = torch.randn(shape, generator=generator).to(self.device) * scheduler.init_noise_sigma
        if labels is not None:
            labels = labels.to(self.device)
        guided = labels is not None and hp.guidance_scale != 1.0
        null = torch.full((num,), hp.num_classes, device=self.device, dtype=torch.long)
        if labels is None and hp.class_conditional:
            labels = null
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            tt = t.expand(num).to(self.device)
            if guided:
                out = net(torch.cat([inp, inp]), torch.cat([tt, tt]), torch.cat([labels, null]))
                cond, uncond = out.sample.chunk(2)
                out = uncond + hp.guidance_scale * (cond - uncond)
            else:
                out = net(inp, tt, class_labels=labels).sample
            x = scheduler.step(out, t, x).prev_sample
        return x.clamp(-1.0, 1.0)

    def sample_labels(self, num: int) -> Tensor | None:
        """Balanced class labels for ``num`` samples (None for an unconditional model)."""
        if not self.hparams.class_conditional:
            return None
        return torch.arange(num) % self.hparams.num_classes

    # -- sample quality ----------------------------------------------------------------------

    def quality(self) -> Any:
        """The :class:`~lightning_losses.metrics.sample_quality.SampleQuality` of the
        datamodule's clean training images (the classifier is trained once and cached)."""
        cached = self.__dict__.get("_quality")
        if cached is not None:
            return cached
        from ..metrics.sample_quality import SampleQuality, load_or_train_classifier

        datamodule = self.trainer.datamodule
        images, labels = datamodule.reference_images()
        cache = self.hparams.quality_cache_dir or self.trainer.default_root_dir
        classifier, path = load_or_train_classifier(
            images,
            labels,
            self.hparams.num_classes,
            Path(cache) / "sample_quality",
            epochs=self.hparams.classifier_epochs,
        )
        # a plain attribute, outside the module tree: the weight-averaging callback's copy of
        # the module must not hold (or average) the classifier
        self.__dict__["_quality"] = SampleQuality(classifier, images, device=self.device)
        self.__dict__["_classifier_path"] = path
        return self.__dict__["_quality"]

    def on_fit_start(self) -> None:
        if self.hparams.val_samples > 0:
            self.quality()  # outside the evaluation loop's inference mode

    def on_test_start(self) -> None:
        self.quality()

    def _score(self, num: int, steps: int | None, net: Any = None) -> dict[str, Any]:
        labels = self.sample_labels(num)
        images = self.sample(num, labels, steps=steps, net=net)
        out = self.quality().evaluate(images, labels)
        return {**out, "images": images.cpu()}

    # -- test and the report -----------------------------------------------------------------

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "test", self.test_buckets, self._eval_generator(batch_idx))
        self._test_images.append(batch["image"].detach())
        self._test_labels.append(torch.as_tensor(batch["label"]).detach())

    def on_test_epoch_start(self) -> None:
        self._test_images: list[Tensor] = []
        self._test_labels: list[Tensor] = []

    def on_test_epoch_end(self) -> None:
        self._log_buckets("test", self.test_buckets)
        hp = self.hparams
        quality = self.quality()
        rows: dict[str, dict[str, Any]] = {}
        scored = self._score(hp.num_samples, steps=None)
        samples = scored.pop("images")
        rows["samples"] = scored
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.sample_seed)
            untrained = self.build_unet().to(self.device).eval()
        rows["untrained model"] = {
            k: v for k, v in self._score(hp.num_samples, None, untrained).items() if k != "images"
        }
        noise = torch.randn(
            (hp.num_samples, hp.in_chans, hp.image_size, hp.image_size),
            generator=torch.Generator().manual_seed(hp.sample_seed),
        ).clamp(-1.0, 1.0)
        rows["gaussian noise"] = quality.evaluate(noise)
        real, real_labels = torch.cat(self._test_images), torch.cat(self._test_labels)
        rows["real (test split)"] = quality.evaluate(real, real_labels)
        self.reports["test"] = rows
        for source, values in rows.items():
            for key in ("fid", "kid", "confident_fraction"):
                name = source.replace(" ", "_").replace("(", "").replace(")", "")
                self.log(f"test/{name}/{key}", float(values[key]))
        self._publish(rows, samples)

    def _publish(self, rows: Mapping[str, Mapping[str, Any]], samples: Tensor) -> None:
        if not self.trainer.is_global_zero:
            return
        hp = self.hparams
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        weighting = getattr(self.criterion, "weighting", "")
        title = (
            f"test report ({hp.loss}, {hp.prediction_type}, weighting={weighting}, "
            f"{hp.sampler if not self.edm else 'edm_euler'} {hp.sampler_steps} steps, "
            f"{hp.num_samples} samples)"
        )
        print_report("", format_quality_table(title, rows))
        png = plot_sample_grid(samples[:100], out / "test_samples.png", title="samples")
        curve = plot_bucket_curves(
            self.bucket_curves, out / "test_loss_by_timestep.png", edm=self.edm
        )
        payload = {
            "stage": "test",
            "rows": rows,
            "loss_by_bucket": self.bucket_curves,
            "classifier_accuracy": self.quality().accuracy(
                torch.cat(self._test_images), torch.cat(self._test_labels)
            ),
            "classifier_cache": str(self.__dict__.get("_classifier_path")),
            "hparams": dict(hp),
            "epoch": self.current_epoch,
            "global_step": self.global_step,
        }
        json_path = out / "test_metrics.json"
        json_path.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")
        print_report(f"test report written to {json_path}, {png}, {curve}")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, estimated_stepping_batches(self.trainer))
        warmup = min(hp.warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return float(value)


#: Columns of the report table: (key, header, scale).
REPORT_COLUMNS = (
    ("fid", "FID", 1.0),
    ("kid", "KID", 1.0),
    ("confident_fraction", "conf>0.9", 1.0),
    ("mean_confidence", "mean conf", 1.0),
    ("class_entropy", "class entropy", 1.0),
    ("label_agreement", "label agree", 1.0),
)


def format_quality_table(title: str, rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Sources as rows (samples and the references), quality measures as columns."""
    width = max(len(name) for name in rows)
    cols = [max(10, len(header)) for _, header, _ in REPORT_COLUMNS]
    header = " " * width + "".join(
        f"  {h:>{c}}" for (_, h, _), c in zip(REPORT_COLUMNS, cols, strict=True)
    )
    rule = "-" * max(len(header), len(title))
    lines = [rule, title, rule, header]
    for name, values in rows.items():
        cells = ""
        for (key, _, scale), c in zip(REPORT_COLUMNS, cols, strict=True):
            value = values.get(key)
            cells += f"  {'-':>{c}}" if value is None else f"  {float(value) * scale:>{c}.4f}"
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join([*lines, rule])


def plot_sample_grid(images: Tensor, path: str | Path, title: str = "") -> Path:
    """The images (N, C, S, S) in [-1, 1] as a square grid, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    c, s = images.shape[1], images.shape[-1]
    grid = torch.ones(c, rows * (s + 1) + 1, cols * (s + 1) + 1)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = 1 + r * (s + 1), 1 + q * (s + 1)
        grid[:, top : top + s, left : left + s] = (images[i].float() + 1.0) / 2.0
    fig, ax = plt.subplots(figsize=(6, 6 * rows / cols + 0.3))
    picture = grid[0] if c == 1 else grid[:3].permute(1, 2, 0)
    ax.imshow(picture.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bucket_curves(curves: Mapping[str, Sequence[float]], path: str | Path, edm: bool) -> Path:
    """The loss per timestep bucket of each stage (training: its last epoch), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for stage, values in curves.items():
        ax.plot(range(len(values)), values, marker="o", label=stage)
    ax.set_xlabel(
        "bucket of ln σ (equal training probability), low noise → high"
        if edm
        else "timestep bucket, low noise → high"
    )
    ax.set_ylabel("loss (weighted, per sample)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class DiffusionCLI(RecipeCLI):
    """LightningCLI that fills image size, channels and classes from the data and tests right
    after ``fit``. A config whose ``data`` section has no ``class_path`` gets
    :class:`~lightning_losses.data.diffusion_datamodule.DiffusionImagesDataModule`."""

    default_data = "lightning_losses.data.diffusion_datamodule.DiffusionImagesDataModule"

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")


def cli_main(args: list[str] | None = None, **kwargs: Any) -> DiffusionCLI:
    return run_recipe_cli(
        DiffusionCLI,
        DiffusionModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        **kwargs,
    )


__all__ = [
    "DiffusionCLI",
    "DiffusionModule",
    "cli_main",
    "format_quality_table",
    "plot_bucket_curves",
    "plot_sample_grid",
]

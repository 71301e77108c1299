r"""Offline sample quality for small image sets: FID and KID in a small classifier's features.

Inception-based FID needs downloaded weights and 299x299 RGB input; neither suits a recipe that
trains on 8x8 digits without a network. :class:`SampleQuality` instead trains a small CNN
classifier once on the real training images (:func:`load_or_train_classifier`, cached on disk
by a key of the data and the architecture) and measures generated images in its penultimate
features:

* **FID** (Heusel et al., NeurIPS 2017),
  :math:`\lVert\mu_r-\mu_g\rVert^2 + \mathrm{tr}(\Sigma_r + \Sigma_g - 2(\Sigma_r\Sigma_g)^{1/2})`,
  and **KID** (Bińkowski et al., ICLR 2018, the unbiased MMD² with the cubic polynomial
  kernel, averaged over random subsets), both through torchmetrics with the classifier's
  feature module as the custom ``feature`` extractor. The numbers compare runs of the same
  classifier and data only: they are not the Inception FID of the literature.
* the **class distribution** of the samples under the classifier, its normalised entropy
  (1 = every class equally often), the mean top-class probability and the fraction of samples
  classified with confidence above ``confidence_threshold`` (0.9): a sample that looks like no
  digit gets a flat prediction;
* for class-conditional samples, the **label agreement**: the fraction classified as the class
  they were generated for.

Images are (N, C, S, S) in [-1, 1], the range of the diffusion recipe's data.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int

#: Bumped when the classifier's architecture or training changes, so old caches are not read.
CLASSIFIER_VERSION = 1


class SampleClassifier(nn.Module):
    """A small CNN for images of any size >= 8: three 3x3 convolutions, global average pooling,
    a ``num_features``-wide feature layer and a linear head.

    :meth:`features` gives the (N, num_features) features FID and KID are computed in.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 10, num_features: int = 64) -> None:
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ClassifierFeatures(nn.Module):
    """The classifier's feature layer as torchmetrics' custom ``feature`` module (N, d)."""

    def __init__(self, classifier: SampleClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.classifier.features(x.float())


def _cache_key(images: Tensor, labels: Tensor, num_classes: int, epochs: int, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(images.detach().cpu().float().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().long().contiguous().numpy().tobytes())
    digest.update(f"{CLASSIFIER_VERSION}-{num_classes}-{epochs}-{seed}".encode())
    return digest.hexdigest()[:16]


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> SampleClassifier:
    """Train :class:`SampleClassifier` on ``images`` (N, C, S, S) in [-1, 1] and ``labels``.

    Adam with a cosine schedule, small random shifts (±1 pixel) and Gaussian pixel noise
    (σ = 0.05) as augmentation, so that slightly imperfect samples are not out of distribution
    for it. Deterministic for a given ``seed`` on a given machine.
    """
    check_int(epochs, "epochs", 1)
    # may be called from an evaluation loop (inference mode, no grad): train outside both
    with torch.inference_mode(False), torch.enable_grad():
        return _train(images.clone(), labels.clone(), num_classes, epochs, batch_size, lr, seed)


def _train(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> SampleClassifier:
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SampleClassifier(images.shape[1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = images.shape[0]
    steps = epochs * max(1, math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    x_all, y_all = images.float(), labels.long()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = x_all[idx]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(2, 3))
            x = x + 0.05 * torch.randn(x.shape, generator=generator)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def load_or_train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    cache_dir: str | Path | None = None,
    *,
    epochs: int = 50,
    seed: int = 0,
) -> tuple[SampleClassifier, Path | None]:
    """The classifier for these training images, from ``cache_dir`` when trained before.

    The cache file ``sample_classifier_<key>.pt`` is keyed by the images, labels, number of
    classes, epochs, seed and :data:`CLASSIFIER_VERSION`; ``cache_dir=None`` trains without
    caching. Returns the classifier (in eval mode, on the CPU) and the cache path.
    """
    path = None
    if cache_dir is not None:
        key = _cache_key(images, labels, num_classes, epochs, seed)
        path = Path(cache_dir) / f"sample_classifier_{key}.pt"
        if path.is_file():
            model = SampleClassifier(images.shape[1], num_classes)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval(), path
    model = train_classifier(images, labels, num_classes, epochs=epochs, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model, path


@torch.no_grad()
def classify(classifier: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Class probabilities (N, K) of ``images`` under ``classifier``."""
    parts = [
        torch.softmax(classifier(images[i : i + batch_size].float()), dim=1)
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(parts)


class SampleQuality:
    """FID, KID and classifier statistics of generated images against a real reference set.

    Args:
        classifier: a trained :class:`SampleClassifier` (see :func:`load_or_train_classifier`).
        reference: real images (N, C, S, S) in [-1, 1]; their features are computed once.
        confidence_threshold: a sample counts as confidently classified above it; 0.9.
        kid_subset_size: subset size of KID (lowered to the number of samples when fewer);
            100. KID averages ``kid_subsets`` (50) random subsets.

    :meth:`evaluate` returns a dict: ``fid``, ``kid``, ``kid_std``, ``confident_fraction``,
    ``mean_confidence``, ``class_entropy`` (normalised to [0, 1]), ``class_fractions`` (a list,
    one per class) and, when ``labels`` are given, ``label_agreement``.
    """

    def __init__(
        self,
        classifier: nn.Module,
        reference: Tensor,
        *,
        confidence_threshold: float = 0.9,
        kid_subset_size: int = 100,
        kid_subsets: int = 50,
        device: torch.device | str = "cpu",
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        if reference.ndim != 4 or reference.shape[0] < 2:
            raise ValueError(
                "`reference` must be (N, C, H, W) real images with N >= 2; got "
                f"{tuple(reference.shape)}."
            )
        if not 0.0 < confidence_threshold < 1.0:
            raise ValueError(
                f"`confidence_threshold` must lie in (0, 1); got {confidence_threshold!r}."
            )
        self.classifier = classifier.eval().to(device)
        self.device = torch.device(device)
        self.reference = reference.to(self.device)
        self.confidence_threshold = confidence_threshold
        self.kid_subset_size = check_int(kid_subset_size, "kid_subset_size", 2)
        self.kid_subsets = check_int(kid_subsets, "kid_subsets", 1)
        self.features = ClassifierFeatures(self.classifier)
        self.fid = FrechetInceptionDistance(
            feature=self.features, reset_real_features=False, normalize=True
        ).to(self.device)
        for i in range(0, reference.shape[0], 512):
            self.fid.update(self.reference[i : i + 512], real=True)

    def _kid(self, images: Tensor) -> tuple[float, float]:
        from torchmetrics.image.kid import KernelInceptionDistance

        subset = min(self.kid_subset_size, images.shape[0], self.reference.shape[0])
        if subset < 2:
            return math.nan, math.nan
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # KID's random subsets: the same for every call
            kid = KernelInceptionDistance(
                feature=self.features, subsets=self.kid_subsets, subset_size=subset, normalize=True
            ).to(self.device)
            kid.update(self.reference, real=True)
            kid.update(images, real=False)
            mean, std = kid.compute()
        return float(mean), float(std)

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor | None = None) -> dict[str, Any]:
        """Quality of ``images`` (N, C, S, S) in [-1, 1]; ``labels`` (N,) the classes they
        were generated for, if any."""
        if images.ndim != 4 or images.shape[1:] != self.reference.shape[1:]:
            expected = (-1, *self.reference.shape[1:])
            raise ValueError(
                f"`images` must have the reference's shape {expected} (N images); got "
                f"{tuple(images.shape)}."
            )
        images = images.to(self.device).float().clamp(-1.0, 1.0)
        self.fid.reset()
        for i in range(0, images.shape[0], 512):
            self.fid.update(images[i : i + 512], real=False)
        fid = float(self.fid.compute()) if images.shape[0] >= 2 else math.nan
        kid, kid_std = self._kid(images)
        probs = classify(self.classifier, images)
        confidence, predicted = probs.max(dim=1)
        k = probs.shape[1]
        fractions = torch.bincount(predicted, minlength=k).double() / images.shape[0]
        nonzero = fractions[fractions > 0]
        entropy = float(-(nonzero * nonzero.log()).sum() / math.log(k)) if k > 1 else 0.0
        out: dict[str, Any] = {
            "fid": fid,
            "kid": kid,
            "kid_std": kid_std,
            "confident_fraction": float((confidence > self.confidence_threshold).double().mean()),
            "mean_confidence": float(confidence.double().mean()),
            "class_entropy": entropy,
            "class_fractions": [float(f) for f in fractions],
        }
        if labels is not None:
            out["label_agreement"] = float((predicted.cpu() == labels.cpu()).double().mean())
        return out

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """The classifier's accuracy on real ``images`` with ``labels`` (a sanity check)."""
        probs = classify(self.classifier, images.to(self.device))
        return float((probs.argmax(1).cpu() == labels.cpu()).double().mean())


__all__ = [
    "CLASSIFIER_VERSION",
    "ClassifierFeatures",
    "SampleClassifier",
    "SampleQuality",
    "classify",
    "load_or_train_classifier",
    "train_classifier",
]

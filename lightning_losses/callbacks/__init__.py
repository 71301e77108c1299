"""Lightning callbacks that plug into :class:`~lightning_losses.LossMixin`'s loss pipeline."""

from .distillation import Distillation
from .dro_weighting import DROWeighting
from .group_dro import GroupDRO
from .infobatch import InfoBatch, estimated_stepping_batches
from .loss_landscape import LossLandscape
from .pld import PLD
from .sam import ASAM, AWP, SAM
from .sampler_owner import TrainSamplerOwner

__all__ = [
    "ASAM",
    "AWP",
    "PLD",
    "SAM",
    "DROWeighting",
    "Distillation",
    "GroupDRO",
    "InfoBatch",
    "LossLandscape",
    "TrainSamplerOwner",
    "estimated_stepping_batches",
]

"""Lightning callbacks that plug into :class:`~lightning_losses.LossMixin`'s loss pipeline."""

from .dro_weighting import DROWeighting
from .group_dro import GroupDRO
from .infobatch import InfoBatch, estimated_stepping_batches
from .pld import PLD
from .sampler_owner import TrainSamplerOwner

__all__ = [
    "PLD",
    "DROWeighting",
    "GroupDRO",
    "InfoBatch",
    "TrainSamplerOwner",
    "estimated_stepping_batches",
]

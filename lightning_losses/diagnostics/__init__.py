"""Curvature and landscape diagnostics of the pure core (torch only, no ``lightning`` import).

The loss over a fixed probe set as a function of the parameters (:class:`LossFunction`, with
Hessian-vector products), and the algorithms that read it: top eigenvalues (power iteration,
Lanczos), trace (Hutchinson, Hutch++), eigenvalue density (stochastic Lanczos quadrature),
filter-normalised directions, 1-D / 2-D slices, interpolation barriers, ε-sharpness and the
per-class loss. Every result is a frozen dataclass that records the HVPs and forward passes it
cost. The Lightning callback schedules these on a seeded probe set and sets the model's mode.
"""

from .density import DEFAULT_SIGMA, SpectralDensity, spectral_density
from .directions import (
    IGNORE,
    NORMALIZATIONS,
    normalize_direction,
    random_direction,
    resolve_direction,
)
from .eigen import EigenResult, lanczos, lanczos_tridiagonal, power_iteration, top_eigenvalues
from .hvp import (
    LinearOperator,
    LossFunction,
    MatrixOperator,
    ParamFilter,
    as_operator,
    select_parameters,
)
from .landscape import (
    EpsilonSharpness,
    Interpolation,
    LineSlice,
    PlaneSlice,
    epsilon_sharpness,
    interpolate,
    line_slice,
    plane_slice,
)
from .per_class import class_batches, class_loss_function, default_labels, subset_batch
from .trace import TraceResult, hutchinson, hutchpp, trace

__all__ = [
    "DEFAULT_SIGMA",
    "IGNORE",
    "NORMALIZATIONS",
    "EigenResult",
    "EpsilonSharpness",
    "Interpolation",
    "LineSlice",
    "LinearOperator",
    "LossFunction",
    "MatrixOperator",
    "ParamFilter",
    "PlaneSlice",
    "SpectralDensity",
    "TraceResult",
    "as_operator",
    "class_batches",
    "class_loss_function",
    "default_labels",
    "epsilon_sharpness",
    "hutchinson",
    "hutchpp",
    "interpolate",
    "lanczos",
    "lanczos_tridiagonal",
    "line_slice",
    "normalize_direction",
    "plane_slice",
    "power_iteration",
    "random_direction",
    "resolve_direction",
    "select_parameters",
    "spectral_density",
    "subset_batch",
    "top_eigenvalues",
    "trace",
]

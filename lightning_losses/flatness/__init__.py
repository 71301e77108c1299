"""Flatness-seeking weight perturbations (SAM, ASAM, AWP): pure core, no ``lightning`` import."""

from .perturbations import EPS, awp_perturbation, global_norm, sam_perturbation

__all__ = ["EPS", "awp_perturbation", "global_norm", "sam_perturbation"]

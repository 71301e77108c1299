"""Calibration tools in pure PyTorch: temperature scaling, a calibration report, and plots.

Typical end-of-test use::

    report = CalibrationReport(num_classes=10, n_bins=15)
    report.update(logits, labels)            # once per batch
    d = report.compute()                     # ece, mce, rms, adaptive_ece, nll, brier, ...
    fig = plot_reliability_diagram(d["reliability"], path="reliability.png")

and post-hoc temperature scaling on a validation split::

    scaler = TemperatureScaler().fit(val_logits, val_labels)
    calibrated_logits = scaler(test_logits)

or a per-sample temperature trained with the correctness-aware loss::

    cal = CorrectnessAwareCalibrator().fit(val_logits, val_labels)
    calibrated_logits = cal(test_logits)
"""

from .correctness import CorrectnessAwareCalibrator, augmentation_views
from .plots import plot_reliability_diagram
from .report import CalibrationReport, adaptive_calibration_error, reliability_bins
from .temperature import (
    TemperatureFit,
    TemperatureScaler,
    fit_temperature,
    fit_temperature_checked,
)

__all__ = [
    "CalibrationReport",
    "CorrectnessAwareCalibrator",
    "TemperatureFit",
    "TemperatureScaler",
    "adaptive_calibration_error",
    "augmentation_views",
    "fit_temperature",
    "fit_temperature_checked",
    "plot_reliability_diagram",
    "reliability_bins",
]

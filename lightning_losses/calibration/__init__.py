"""Calibration tools in pure PyTorch: temperature scaling, a calibration report, and plots.

Typical end-of-test use::

    report = CalibrationReport(num_classes=10, n_bins=15)
    report.update(logits, labels)            # once per batch
    d = report.compute()                     # ece, mce, rms, adaptive_ece, nll, brier, ...
    fig = plot_reliability_diagram(d["reliability"], path="reliability.png")

and post-hoc temperature scaling on a validation split::

    scaler = TemperatureScaler().fit(val_logits, val_labels)
    calibrated_logits = scaler(test_logits)
"""

from .plots import plot_reliability_diagram
from .report import CalibrationReport, adaptive_calibration_error, reliability_bins
from .temperature import TemperatureScaler, fit_temperature

__all__ = [
    "CalibrationReport",
    "TemperatureScaler",
    "adaptive_calibration_error",
    "fit_temperature",
    "plot_reliability_diagram",
    "reliability_bins",
]

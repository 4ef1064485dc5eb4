"""Figures of the study, one module per family (PNG plus PDF or SVG), drawn with matplotlib's object API."""

from onepixel.figures.common import FORMATS, save_figure
from onepixel.figures.locality import plot_locality
from onepixel.figures.propagation import plot_average_pm, plot_pm_depth, plot_pm_grid
from onepixel.figures.receptive_fields import plot_erf, plot_receptive_fields
from onepixel.figures.vulnerability import plot_vulnerability_examples

__all__ = [
    "FORMATS",
    "plot_average_pm",
    "plot_erf",
    "plot_locality",
    "plot_pm_depth",
    "plot_pm_grid",
    "plot_receptive_fields",
    "plot_vulnerability_examples",
    "save_figure",
]

"""A finished search shown: figures (`figures`: Pareto front, progression, hypervolume,
comparisons) and the markdown/HTML report (`document`)."""

from .document import write_report
from .figures import comparison_figure, hypervolume_figure, pareto_figure, plot_run, progression_figure, save_figure

__all__ = ["comparison_figure", "hypervolume_figure", "pareto_figure", "plot_run", "progression_figure",
           "save_figure", "write_report"]

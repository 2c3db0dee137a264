"""pyqtgraph plots for the studio: Pareto front, live training curves, sensitivity heatmap and
the plan diff shown when two experiments are compared. They take plain dicts and numbers."""

from studio.qt.plots.curves import CurvesPlot
from studio.qt.plots.front import AXES, pareto_front
from studio.qt.plots.heatmap import SensitivityHeatmap
from studio.qt.plots.pareto import ParetoPlot, point_summary
from studio.qt.plots.plan_diff import PlanDiffView, plan_diff

__all__ = ["AXES", "CurvesPlot", "ParetoPlot", "PlanDiffView", "SensitivityHeatmap",
           "pareto_front", "plan_diff", "point_summary"]

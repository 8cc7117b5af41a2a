"""Figures, tables and small analyses for the notebooks; every notebook cell is a call into here.

Import the submodule you need; this package imports none of them, because they pull in different
parts of oobleck (and ``execute`` needs the optional notebook dependencies):

* :mod:`oobleck.viz.templates` -- pipeline templates: stage cuts, devices, memory (planning only);
* :mod:`oobleck.viz.plans` -- instantiated plans and throughput against cluster size (planning only);
* :mod:`oobleck.viz.simulation` -- one simulated run: timeline per policy, time breakdown (simulator);
* :mod:`oobleck.viz.sweep` -- failure-rate sweeps across policies and models (simulator);
* :mod:`oobleck.viz.runs` -- reading a recorded run directory of the real runtime (no torch);
* :mod:`oobleck.viz.live` -- recording a real run with a node killed mid-run (starts the runtime);
* :mod:`oobleck.viz.recovery` -- predicted against measured recovery phases and step times;
* :mod:`oobleck.viz.step_model` -- the planning core's step-time constants fitted to measured steps;
* :mod:`oobleck.viz.prediction` -- a recorded run predicted: recovery constants, plan, simulation;
* :mod:`oobleck.viz.execute` -- headless execution of notebooks and comparison of their outputs;
* :mod:`oobleck.viz.style` -- the shared look: sizes, colours, units.

Every plotting function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``.
"""

__all__ = [
    "execute",
    "live",
    "plans",
    "prediction",
    "recovery",
    "runs",
    "simulation",
    "step_model",
    "style",
    "sweep",
    "templates",
]

"""Grids of training runs and their report: :mod:`~diffstride.experiments.sweep`
(``diffstride-sweep``) and :mod:`~diffstride.experiments.report` (``diffstride-report``)."""

"""``gapeval study``: the 2 x 2 domain-gap study (training domain x test input) from one YAML, every stage cached.

Modules: :mod:`~gapeval.study.config` (YAML schema and validation), :mod:`~gapeval.study.data` (pair-set layout and the
study's view of it), :mod:`~gapeval.study.proxy` (the NAIP cross-acquisition proxy pair set),
:mod:`~gapeval.study.runner` (stages, caching, progress), :mod:`~gapeval.study.report` (tables, figures, report),
:mod:`~gapeval.study.cli` (``gapeval study run``).
"""

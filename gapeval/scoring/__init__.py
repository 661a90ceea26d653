"""The parts of ``gapeval score`` (the API and command line are :mod:`gapeval.score`):

- :mod:`~gapeval.scoring.config`: :class:`ScoreConfig`, everything that changes the numbers;
- :mod:`~gapeval.scoring.weights`: loading the LPIPS-Sat network and identifying its weights;
- :mod:`~gapeval.scoring.plan`: header checks of one scene and which pairs still need scoring (resume);
- :mod:`~gapeval.scoring.scene`: scoring one scene window by window;
- :mod:`~gapeval.scoring.runner`: scoring many scenes in threads with a progress bar.

The results folder (``pairs.csv``, ``summary.json``) is :mod:`gapeval.results`.
"""

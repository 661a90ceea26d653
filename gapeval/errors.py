"""gapeval raises the project's error family (see :mod:`lpips_sat.errors`); re-exported here for convenience."""

from lpips_sat.errors import InputError, LPIPSSatError, MissingFileError, OfflineError, WeightsError

__all__ = ["InputError", "LPIPSSatError", "MissingFileError", "OfflineError", "WeightsError"]

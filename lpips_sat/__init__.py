"""LPIPS-Sat: a perceptual distance for Sentinel-2 super-resolution on self-supervised Sentinel-2 features."""

from lpips_sat.errors import InputError, LPIPSSatError, MissingFileError, OfflineError, WeightsError
from lpips_sat.functional import lpips_sat
from lpips_sat.metric import LPIPSSat
from lpips_sat.registry import REGISTRY, WeightsEntry, get_entry

__version__ = "0.1.0"

__all__ = ["LPIPSSat", "lpips_sat", "REGISTRY", "WeightsEntry", "get_entry", "LPIPSSatError", "InputError", "WeightsError", "MissingFileError", "OfflineError", "__version__"]

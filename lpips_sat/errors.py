"""One error family for the whole project, so callers can catch ``LPIPSSatError`` once.

Every subclass also derives from the matching built-in (``ValueError``, ``FileNotFoundError``) so
code written against the standard exceptions keeps working.
"""

from __future__ import annotations


class LPIPSSatError(Exception):
    """Base class of every error raised by ``lpips_sat`` and ``gapeval``."""


class InputError(LPIPSSatError, ValueError):
    """An image, tensor or file has the wrong shape, range, bands or values."""


class WeightsError(LPIPSSatError, ValueError):
    """A weights file or checkpoint is missing keys, has unexpected keys, or fails its sha256 check."""


class MissingFileError(LPIPSSatError, FileNotFoundError):
    """A file or folder that was asked for does not exist."""


class OutputError(LPIPSSatError, OSError):
    """An output file or folder cannot be created or written (a file in the way, no permission, no such device)."""


class PartialFailure(LPIPSSatError):
    """Some items (files, pairs) failed and the others were processed and written; the command exits 3."""


class OfflineError(LPIPSSatError, RuntimeError):
    """A Hugging Face hub id was given but the hub cannot be reached; pass a local path instead."""


class MissingExtraError(LPIPSSatError, ImportError):
    """An optional dependency is not installed; the message names the extra (``pip install "lpips-sat[eval]"``)."""

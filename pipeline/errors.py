"""Every error a user can cause, in one module that imports nothing else of the project.

``InputError`` means bad input, not a bug: its message names the file, the params key or the
environment variable at fault and what was expected. Stages (``stages.common.run``) report it in
one line and exit with status 1, without a traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (a params key, a dataset file, an archive, a cache, a checkpoint): the message
    names it and says what was expected."""


class ParamsError(InputError):
    """A params value that is unknown, missing, of the wrong type or out of its range."""


class DivergedError(ParamsError):
    """A training whose loss or weights became inf or nan: the message names the params section
    whose learning rate to lower."""


class DatasetError(InputError):
    """Data that does not match the layout or the protocol a reader expects."""


class DownloadError(InputError):
    """A download that failed or did not match its checksum."""


class UnsafeArchiveError(InputError):
    """An archive member that would escape the target folder, or an archive beyond the limits."""


class CacheError(InputError):
    """A feature cache that is incomplete or was made from other inputs than expected."""


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded (not plain tensors, damaged) or does not fit."""


class MissingWeightsError(InputError):
    """Pretrained weights that are not on this machine (a package not installed, a file not
    cached): the message names the package or file and how to get it."""

"""The errors minipt raises.

Every error a user can provoke with bad input is a ``MiniptError``; its message
names the thing that is wrong (the missing key, the shape, the file).
"""


class MiniptError(Exception):
    """Base class of every error minipt raises on purpose."""


class CheckpointNotFoundError(MiniptError, FileNotFoundError):
    """A path, catalogue name or hub repo id that resolves to no checkpoint."""


class CheckpointError(MiniptError):
    """A checkpoint file that cannot be read: truncated, corrupted, wrong checksum."""


class SaveError(MiniptError, OSError):
    """A file minipt was asked to write that cannot be written (missing folder, no permission, full disk);
    the file it would have replaced is left as it was."""


class ConfigError(MiniptError, ValueError):
    """A config that does not describe the model asked for."""


class KeyMismatchError(MiniptError, KeyError):
    """Missing, unexpected or mis-shaped tensors between a checkpoint and a model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class InputError(MiniptError, ValueError):
    """Model input that does not fit the model: ids out of range, too long, wrong shape."""


class TrainingError(MiniptError, ValueError):
    """A training set-up that cannot do what was asked: labels outside the head, optimizer groups
    that miss or repeat a parameter, a quantised model to train, a checkpoint of another run."""


class StageError(TrainingError, KeyError):
    """A stage name the model does not declare (the message lists the ones it does)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class MissingDependencyError(MiniptError, ImportError):
    """An optional package a feature needs is not installed (the message says how to install it)."""

"""Models built from minipt's blocks, each family in one file that reads like its paper.

Each file ends with its family's declaration (``minipt.registry.register``); ``model_class``
finds the class for an official ``config.json``, ``model_class_for`` the class for a checkpoint
(from its config, or from a tensor only a config-less format holds).
"""

from ..registry import describe, families, model_class, model_class_for

__all__ = ["describe", "families", "model_class", "model_class_for"]

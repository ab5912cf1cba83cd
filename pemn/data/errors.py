"""The one exception type of ``pemn.data``."""
from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset is missing, malformed or unsafe to load.

    The message is one sentence that names the file or folder and says what to do.
    """

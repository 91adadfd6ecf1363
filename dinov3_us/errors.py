"""Error types: user errors (bad config, bad data, bad weights) are distinct from internal bugs.

Every user-facing error names the file or key at fault and what was expected. Catch
`DinoUSError` to handle all of them; an `AssertionError` is always a bug in dinov3_us.
"""


class DinoUSError(Exception):
    """Base class of every error that a user can fix (as opposed to an internal bug)."""


class ConfigError(DinoUSError, ValueError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class DataError(DinoUSError, ValueError):
    """Input data (a file, a shard, a CSV row) is missing or not in the expected format."""


class CheckpointError(DinoUSError, ValueError):
    """Weights or a checkpoint do not match the model (missing/unexpected keys, shapes)."""

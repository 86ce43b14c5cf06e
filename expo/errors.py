"""The one exception family the CLI turns into a single clear line on stderr."""


class ExpoError(Exception):
    """A user-facing error: its message names what is wrong and where."""


class ConfigError(ExpoError):
    """A configuration key is unknown, has the wrong type or an out-of-range value."""


class DataError(ExpoError):
    """Input data cannot be read or yields no usable row."""


class ModelError(ExpoError):
    """A model cannot be found or loaded under the configured safety rules."""


class TrackingError(ExpoError):
    """The MLflow tracking server or registry cannot be reached or refuses an operation."""

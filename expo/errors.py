"""The one exception family the CLI turns into a single clear line on stderr."""


class ExpoError(Exception):
    """A user-facing error: its message names what is wrong and where."""

    docs = ""  # the page that explains what to set instead; the CLI prints it after the message


class ConfigError(ExpoError):
    """A configuration key is unknown, has the wrong type or an out-of-range value."""

    docs = "docs/configuration.md"


class DataError(ExpoError):
    """Input data cannot be read or yields no usable row."""

    docs = "docs/configuration.md, section data"


class ModelError(ExpoError):
    """A model cannot be found or loaded under the configured safety rules."""

    docs = "docs/real-model.md"


class TrackingError(ExpoError):
    """The MLflow tracking server or registry cannot be reached or refuses an operation."""

    docs = "docs/getting-started.md, section The registry"

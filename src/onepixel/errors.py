"""Exceptions whose messages are meant for users (one line, no traceback)."""


class OnePixelError(Exception):
    """A user-facing error: bad config, missing or corrupt file, bad value.

    The message is one line that names the key, file or value and says what is
    allowed. The CLI prints it as ``error: <message>`` and exits with status 2.
    """


class ConfigError(OnePixelError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class DataError(OnePixelError):
    """A data, checkpoint or result file is missing, corrupt or of the wrong kind."""

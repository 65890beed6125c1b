"""The error every layer raises for a bad setting or a bad name: core/config.py and core/layout.py both
need it, and config reads its default paths from the layout."""


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""

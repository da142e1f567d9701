"""One exception root for the project; backend errors are mapped to these at the boundary."""


class SpeedlayerError(Exception):
    """Root of every error raised on purpose by speedlayer."""


class ConfigError(SpeedlayerError, ValueError):
    """A setting, flag or parameter is invalid."""


class StoreError(SpeedlayerError):
    """The candle store failed (I/O, corruption, closed)."""

"""speedlayer core: models, intervals, settings, clock and the Store interface with its backends.

The services (``ingest``, ``processors``, ``api``) build on this package; it never imports them,
except for the command-line entry point, which is the composition root and imports them lazily.
"""

__version__ = "0.1.0"

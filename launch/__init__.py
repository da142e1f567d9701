"""The composition layer: the CLI, the services and the wiring that builds them from settings.

The only package that imports the services (``api``, ``ingest``, ``processors``) together; the
core ``speedlayer`` imports only itself (docs/design.md#layout)."""

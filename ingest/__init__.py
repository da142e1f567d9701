"""Ingest: feeds -> validated 1-minute bars. The Polygon client (``ingest.polygon``), the Polygon
protocol simulator (``ingest.simulator``), file readers and replay batches (``files``,
``replay``), synthetic data (``synthetic``)."""

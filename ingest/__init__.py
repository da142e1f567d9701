"""Ingest: feeds (file replay, synthetic data, Polygon) -> validated 1-minute bars."""

"""The FastAPI service: REST queries from the store (live feeds come from the candle bus)."""

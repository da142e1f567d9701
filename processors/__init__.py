"""Processors: the resampler, the pipeline that feeds it and writes its candles, and the sinks."""

"""The live candle feed behind ``/ws`` and ``/stream/candles``.

* :mod:`api.live.messages`: what clients receive (numbered candle events, acks, snapshots,
  errors), each encoded once, and the validation of a client's symbols x intervals selection;
* :mod:`api.live.client`: one connection's subscriptions, its bounded outgoing queue and the
  per-pair hand-over from a snapshot to live updates;
* :mod:`api.live.hub`: the one bus subscription fanned out to every client, snapshots read from
  the store, SSE replay, limits, counters, and the supervision of the bus subscription.
"""

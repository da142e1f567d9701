// speedlayer dashboard: live candlestick charts from the API's REST history and its WebSocket feed.
//
// One WebSocket (/ws) carries every chart's pair; each chart loads its history from
// GET /candles/{symbol} (newest page first, older pages via next_cursor when scrolled left) and
// applies live updates in place. Candles are merged by (bucket start, revision), so history,
// snapshots and updates may arrive in any order and a stale one never overwrites a newer one.
// State lives in the URL hash (#symbol=AAPL&intervals=1m,15m,1h); the API key in localStorage.

const KEY_STORAGE = "speedlayer.apiKey";
const query = new URLSearchParams(location.search);
const PAGE = intParam("page", 500, 10, 10000); // candles per history request
const FIRST_SNAPSHOT = 50; // bridges the first history page and the live feed
const RESYNC_SNAPSHOT = 500; // after a reconnect: covers the time the feed was down
const BAR_SPACING = 6; // pixels per bar until a short history is fitted to the view
const LOAD_MORE_AT = 10; // load older history when fewer bars than this are left of the view
const PING_EVERY_MS = 15000;
const SILENT_LIMIT_MS = 45000; // no message for this long: the connection is dead, reconnect
const OPEN_TIMEOUT_MS = 10000; // a handshake that takes longer is given up and retried
const LAG_EVERY_MS = 5000;
const BACKOFF_MS = [500, 1000, 2000, 3000, 5000];
const DEFAULT_INTERVALS = ["1m", "15m", "1h"];
const PREFERRED_SYMBOLS = ["AAPL", "MSFT", "SPY"];

const COLORS = {
  up: "#26a69a",
  down: "#ef5350",
  upForming: "rgba(38, 166, 154, 0.18)",
  downForming: "rgba(239, 83, 80, 0.18)",
  upVolume: "rgba(38, 166, 154, 0.5)",
  downVolume: "rgba(239, 83, 80, 0.5)",
  upVolumeForming: "rgba(38, 166, 154, 0.25)",
  downVolumeForming: "rgba(239, 83, 80, 0.25)",
  text: "#d1d4dc",
  grid: "#1b2430",
  border: "#273241",
  background: "#0f1419",
};

let LWC = null; // the lightweight-charts module, imported at start

function intParam(name, fallback, min, max) {
  const value = Number.parseInt(query.get(name) ?? "", 10);
  return Number.isFinite(value) ? Math.min(max, Math.max(min, value)) : fallback;
}

const $ = (selector) => document.querySelector(selector);

// --- the API key and REST ---------------------------------------------------------------------

class AuthError extends Error {}

// An answer the API gave (not a network failure): 4xx means retrying will not help.
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  get final() {
    return this.status >= 400 && this.status < 500;
  }
}

const TICKER = /^[A-Za-z0-9][A-Za-z0-9.:/_^=+-]{0,39}$/; // what the API accepts as a symbol

const auth = {
  get key() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  },
  save(key) {
    localStorage.setItem(KEY_STORAGE, key);
  },
  forget() {
    localStorage.removeItem(KEY_STORAGE);
  },
  required: false,
  // A REST call was refused: ask for a key (once); everything else waits for it.
  refused(status) {
    this.required = true;
    const form = $("#key-form");
    $("#key-message").textContent =
      status === 403 && this.key
        ? "the saved key was not accepted; enter another"
        : "kept in this browser only (localStorage)";
    form.hidden = false;
    $("#api-key").focus();
    if (dashboard) dashboard.setStatus("unauthorized", "API key needed");
    else drawState("unauthorized", "API key needed");
  },
};

async function api(path) {
  const headers = {};
  const key = auth.key;
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    auth.refused(response.status);
    throw new AuthError(`${path}: ${response.status}`);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();

// --- formatting -------------------------------------------------------------------------------

function formatNumber(value, digits) {
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function formatVolume(value) {
  const units = [
    [1e9, "B"],
    [1e6, "M"],
    [1e3, "K"],
  ];
  for (const [size, unit] of units) {
    if (value >= size) return `${(value / size).toFixed(2)}${unit}`;
  }
  return value.toFixed(0);
}

function precisionFor(price) {
  if (price >= 1000) return 2;
  if (price >= 1) return price >= 10 ? 2 : 4;
  return 6;
}

function drawState(state, text) {
  $("#status").dataset.state = state;
  $("#status-text").textContent = text;
  if (state !== "live") $("#lag").textContent = "–";
}

const clock = (date) => date.toLocaleTimeString("en-GB", { hour12: false });

// --- the live feed: one WebSocket for every chart ---------------------------------------------

class Feed {
  constructor(board) {
    this.board = board;
    this.pairs = new Map(); // "symbol|interval" -> {symbol, interval, panels: Set}
    this.socket = null;
    this.opened = 0; // connections that opened
    this.failures = 0; // consecutive connection attempts that failed
    this.lastMessageAt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.live = true;
  }

  static key(symbol, interval) {
    return `${symbol}|${interval}`;
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const key = auth.key;
    return `${scheme}://${location.host}/ws${key ? `?api_key=${encodeURIComponent(key)}` : ""}`;
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (auth.required) return; // the key form is shown; saving a key reloads the page
    this.board.setStatus(this.opened ? "reconnecting" : "connecting", "connecting…");
    const socket = new WebSocket(this.url());
    this.socket = socket;
    let opened = false;
    const openTimer = setTimeout(() => socket.close(), OPEN_TIMEOUT_MS);
    socket.onopen = () => {
      opened = true;
      clearTimeout(openTimer);
      this.failures = 0;
      this.opened += 1;
      this.lastMessageAt = Date.now();
      if (this.opened > 1) this.board.reconnected();
      this.board.setStatus("live", "live");
      // Resubscribe everything, one message per symbol, with a fresh snapshot.
      const resync = this.opened > 1;
      const bySymbol = new Map();
      for (const pair of this.pairs.values()) {
        if (!bySymbol.has(pair.symbol)) bySymbol.set(pair.symbol, []);
        bySymbol.get(pair.symbol).push(pair.interval);
      }
      for (const [symbol, intervals] of bySymbol) {
        this.send({
          action: "subscribe",
          symbols: [symbol],
          intervals,
          snapshot: resync ? RESYNC_SNAPSHOT : FIRST_SNAPSHOT,
        });
      }
      this.pingTimer = setInterval(() => this.heartbeat(), PING_EVERY_MS);
    };
    socket.onmessage = (event) => {
      this.lastMessageAt = Date.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // the server only sends JSON; ignore anything else
      }
      this.dispatch(message);
    };
    socket.onclose = (event) => {
      clearTimeout(openTimer);
      clearInterval(this.pingTimer);
      this.pingTimer = null;
      if (this.socket !== socket) return;
      this.socket = null;
      if (!opened) {
        this.failures += 1;
        // A refused handshake looks like a network error: check the key over REST now and then.
        if (this.failures % 3 === 1) this.board.checkAccess();
      }
      const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
      const jittered = Math.round(delay * (0.8 + Math.random() * 0.4));
      const why = event.reason ? `${event.reason}; ` : "";
      this.board.setStatus("reconnecting", `${why}reconnecting in ${(jittered / 1000).toFixed(1)} s`);
      this.retryTimer = setTimeout(() => this.connect(), jittered);
    };
  }

  heartbeat() {
    if (!this.isOpen) return;
    if (Date.now() - this.lastMessageAt > SILENT_LIMIT_MS) {
      this.socket.close(4000, "no messages"); // half-open connection: start over
      return;
    }
    this.send({ action: "ping" });
  }

  send(message) {
    if (this.isOpen) this.socket.send(JSON.stringify(message));
  }

  watch(panel, symbol, interval) {
    const key = Feed.key(symbol, interval);
    let pair = this.pairs.get(key);
    if (!pair) {
      pair = { symbol, interval, panels: new Set() };
      this.pairs.set(key, pair);
      this.send({ action: "subscribe", symbols: [symbol], intervals: [interval], snapshot: FIRST_SNAPSHOT });
    }
    pair.panels.add(panel);
  }

  unwatch(panel, symbol, interval) {
    const key = Feed.key(symbol, interval);
    const pair = this.pairs.get(key);
    if (!pair) return;
    pair.panels.delete(panel);
    if (pair.panels.size === 0) {
      this.pairs.delete(key);
      this.send({ action: "unsubscribe", symbols: [symbol], intervals: [interval] });
    }
  }

  dispatch(message) {
    switch (message.type) {
      case "candle": {
        const pair = this.pairs.get(Feed.key(message.symbol, message.interval));
        if (!pair) return; // unsubscribed meanwhile
        this.board.updated();
        for (const panel of pair.panels) panel.onCandle(message);
        break;
      }
      case "snapshot": {
        const pair = this.pairs.get(Feed.key(message.symbol, message.interval));
        if (!pair) return;
        for (const panel of pair.panels) panel.onSnapshot(message.candles);
        break;
      }
      case "subscribed":
        if (message.live === false) {
          this.live = false;
          this.board.setStatus("live", "snapshots only: this server has no live feed");
        }
        break;
      case "error":
        if (message.request !== undefined) {
          this.board.notice(`The server refused a request: ${message.message}`);
        } else {
          this.board.setStatus("reconnecting", message.message); // e.g. server shutting down
        }
        break;
      default:
        break; // pong, unsubscribed
    }
  }
}

// --- one chart --------------------------------------------------------------------------------

class Panel {
  constructor(board, interval) {
    this.board = board;
    this.symbol = null;
    this.interval = interval;
    this.bars = new Map(); // bucket start (epoch seconds) -> candle as the API sends it
    this.lastTime = -Infinity;
    this.loaded = false; // the first history page is drawn
    this.nextCursor = null;
    this.loadingOlder = false;
    this.generation = 0; // bumped on every (symbol, interval) change: late answers are dropped
    this.historyCandles = 0; // candles that came from REST history
    this.hovered = null;
    this.fitted = false; // the view was fitted to a short history
    this.liveUpdates = 0; // updates received over the WebSocket
    this.lastLive = null; // the latest of them

    const node = $("#panel-template").content.firstElementChild.cloneNode(true);
    this.node = node;
    this.select = node.querySelector(".panel-interval");
    this.legend = node.querySelector(".legend");
    this.info = node.querySelector(".panel-info");
    node.querySelector(".panel-close").addEventListener("click", () => board.removePanel(this));
    for (const name of board.intervals) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      this.select.append(option);
    }
    this.select.value = interval;
    this.select.addEventListener("change", () => {
      this.setPair(this.symbol, this.select.value);
      board.saveState();
    });
    $("#charts").append(node);

    const chart = LWC.createChart(node.querySelector(".chart"), {
      autoSize: true,
      layout: {
        background: { type: LWC.ColorType.Solid, color: COLORS.background },
        textColor: COLORS.text,
        fontSize: 11,
      },
      grid: { vertLines: { color: COLORS.grid }, horzLines: { color: COLORS.grid } },
      crosshair: { mode: LWC.CrosshairMode.Normal },
      rightPriceScale: { borderColor: COLORS.border, scaleMargins: { top: 0.08, bottom: 0.27 } },
      timeScale: {
        borderColor: COLORS.border,
        timeVisible: true,
        secondsVisible: false,
        rightOffset: 3,
        barSpacing: BAR_SPACING,
        maxBarSpacing: 24,
      },
    });
    this.chart = chart;
    this.candles = chart.addSeries(LWC.CandlestickSeries, {
      upColor: COLORS.up,
      downColor: COLORS.down,
      borderUpColor: COLORS.up,
      borderDownColor: COLORS.down,
      wickUpColor: COLORS.up,
      wickDownColor: COLORS.down,
      borderVisible: true,
    });
    this.volume = chart.addSeries(LWC.HistogramSeries, {
      priceScaleId: "volume",
      priceFormat: { type: "volume" },
      lastValueVisible: false,
      priceLineVisible: false,
    });
    chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    chart.timeScale().subscribeVisibleLogicalRangeChange((range) => {
      if (range && this.loaded && range.from < LOAD_MORE_AT) this.loadOlder();
    });
    chart.subscribeCrosshairMove((param) => {
      this.hovered = param.time !== undefined ? this.bars.get(param.time) || null : null;
      this.drawLegend();
    });
  }

  get intervalSeconds() {
    return (this.board.intervalMs.get(this.interval) || 60000) / 1000;
  }

  setPair(symbol, interval) {
    if (this.symbol !== null) this.board.feed.unwatch(this, this.symbol, this.interval);
    this.symbol = symbol;
    this.interval = interval;
    this.select.value = interval;
    this.node.querySelector(".panel-symbol").textContent = symbol;
    this.reset();
    this.board.feed.watch(this, symbol, interval);
    this.loadHistory();
  }

  reset() {
    this.generation += 1;
    this.bars.clear();
    this.lastTime = -Infinity;
    this.loaded = false;
    this.nextCursor = null;
    this.loadingOlder = false;
    this.historyCandles = 0;
    this.hovered = null;
    this.fitted = false;
    this.chart.timeScale().applyOptions({ barSpacing: BAR_SPACING }); // undo an earlier fit
    this.candles.setData([]);
    this.volume.setData([]);
    this.drawLegend();
  }

  historyUrl(cursor) {
    const params = new URLSearchParams({ interval: this.interval, order: "desc", limit: String(PAGE) });
    if (cursor) params.set("cursor", cursor);
    return `/candles/${encodeURIComponent(this.symbol)}?${params}`;
  }

  async loadHistory() {
    const generation = this.generation;
    this.info.textContent = "loading…";
    let page;
    try {
      page = await getJson(this.historyUrl(null));
    } catch (error) {
      if (generation !== this.generation || error instanceof AuthError) return;
      if (error instanceof ApiError && error.final) {
        this.info.textContent = `no history: ${error.message}`;
        this.loaded = true; // live updates, if any, are still drawn
        this.render();
        return;
      }
      this.info.textContent = `history failed (${error.message}); retrying`;
      setTimeout(() => {
        if (generation === this.generation) this.loadHistory();
      }, 2000);
      return;
    }
    if (generation !== this.generation) return;
    for (const candle of page.candles) this.merge(candle);
    this.historyCandles += page.candles.length;
    this.nextCursor = page.next_cursor;
    this.loaded = true;
    this.render();
    const newest = page.candles[0];
    if (newest) {
      const digits = precisionFor(newest.close);
      this.candles.applyOptions({ priceFormat: { type: "price", precision: digits, minMove: 10 ** -digits } });
    }
    this.chart.timeScale().scrollToRealTime();
    this.describe();
    this.fillView();
  }

  // Load older pages while the view is not filled (and when scrolled to the left edge); once
  // everything is loaded and still does not fill the view, widen the bars to fit it.
  fillView() {
    const range = this.chart.timeScale().getVisibleLogicalRange();
    if (!range || range.from >= LOAD_MORE_AT) return;
    if (this.nextCursor) {
      this.loadOlder();
    } else if (range.from < 0 && !this.fitted) {
      this.fitted = true;
      this.chart.timeScale().fitContent();
    }
  }

  async loadOlder() {
    if (!this.nextCursor || this.loadingOlder || !this.loaded) return;
    this.loadingOlder = true;
    const generation = this.generation;
    this.info.textContent = "loading older…";
    try {
      const page = await getJson(this.historyUrl(this.nextCursor));
      if (generation !== this.generation) return;
      for (const candle of page.candles) this.merge(candle);
      this.historyCandles += page.candles.length;
      this.nextCursor = page.next_cursor;
      this.render();
    } catch (error) {
      if (generation !== this.generation || error instanceof AuthError) return;
      this.info.textContent = `older history failed (${error.message})`;
      return;
    } finally {
      if (generation === this.generation) this.loadingOlder = false;
    }
    this.describe();
    // Still at the left edge (a short page, a wide screen)? Keep going, one page at a time.
    requestAnimationFrame(() => {
      if (generation === this.generation) this.fillView();
    });
  }

  describe() {
    const more = this.nextCursor ? "" : " · all history";
    this.info.textContent = `${this.bars.size} candles${more}`;
  }

  // Keep the candle unless a newer revision of the same bucket is already here.
  merge(candle) {
    const time = Math.floor(candle.timestamp / 1000);
    const known = this.bars.get(time);
    if (known && (known.revision > candle.revision || (known.revision === candle.revision && known.final && !candle.final))) {
      return null;
    }
    this.bars.set(time, candle);
    return { time, known: known !== undefined };
  }

  onCandle(candle) {
    this.liveUpdates += 1;
    this.lastLive = candle;
    const merged = this.merge(candle);
    if (!merged || !this.loaded) return; // the first history page draws everything
    const { time, known } = merged;
    if (time >= this.lastTime) {
      this.candles.update(this.candleBar(time, candle));
      this.volume.update(this.volumeBar(time, candle));
      this.lastTime = time;
    } else if (known) {
      this.candles.update(this.candleBar(time, candle), true); // a correction of an older bar
      this.volume.update(this.volumeBar(time, candle), true);
    } else {
      this.render(); // a bucket filled in between existing ones: redraw
    }
    if (!this.hovered) this.drawLegend();
    this.describe();
  }

  onSnapshot(candles) {
    if (candles.length === 0) return;
    const oldest = Math.floor(candles[0].timestamp / 1000);
    if (this.loaded && this.bars.size > 0 && oldest > this.lastTime + this.intervalSeconds) {
      // The feed was down longer than the snapshot covers: start over from the newest history.
      this.reset();
      for (const candle of candles) this.merge(candle);
      this.loadHistory();
      return;
    }
    for (const candle of candles) this.merge(candle);
    if (this.loaded) {
      this.render();
      this.describe();
    }
  }

  render() {
    const times = [...this.bars.keys()].sort((a, b) => a - b);
    this.candles.setData(times.map((time) => this.candleBar(time, this.bars.get(time))));
    this.volume.setData(times.map((time) => this.volumeBar(time, this.bars.get(time))));
    this.lastTime = times.length ? times[times.length - 1] : -Infinity;
    this.drawLegend();
  }

  candleBar(time, c) {
    const bar = { time, open: c.open, high: c.high, low: c.low, close: c.close };
    if (!c.final) {
      // The forming candle: hollow body, so it stands out from final ones.
      const up = c.close >= c.open;
      bar.color = up ? COLORS.upForming : COLORS.downForming;
      bar.borderColor = bar.wickColor = up ? COLORS.up : COLORS.down;
    }
    return bar;
  }

  volumeBar(time, c) {
    const up = c.close >= c.open;
    const color = c.final
      ? up ? COLORS.upVolume : COLORS.downVolume
      : up ? COLORS.upVolumeForming : COLORS.downVolumeForming;
    return { time, value: c.volume, color };
  }

  latest() {
    return this.lastTime === -Infinity ? null : this.bars.get(this.lastTime) || null;
  }

  drawLegend() {
    const c = this.hovered || this.latest();
    this.legend.replaceChildren();
    if (!c) return;
    const digits = precisionFor(c.close);
    const direction = c.close >= c.open ? "up" : "down";
    const parts = [
      ["O", formatNumber(c.open, digits)],
      ["H", formatNumber(c.high, digits)],
      ["L", formatNumber(c.low, digits)],
      ["C", formatNumber(c.close, digits)],
      ["V", formatVolume(c.volume)],
    ];
    for (const [label, value] of parts) {
      const span = document.createElement("span");
      span.className = label === "V" ? "" : direction;
      span.textContent = `${label} ${value} `;
      this.legend.append(span);
    }
    const tag = document.createElement("span");
    tag.className = `tag ${c.final ? "final" : "forming"}`;
    tag.textContent = c.final ? "final" : "forming";
    tag.title = `revision ${c.revision}`;
    this.legend.append(tag);
  }

  destroy() {
    this.board.feed.unwatch(this, this.symbol, this.interval);
    this.generation += 1;
    this.chart.remove();
    this.node.remove();
  }

  // What the chart shows, for tests and debugging (window.speedlayer.inspect()).
  inspect() {
    const data = this.candles.data();
    const last = this.latest();
    return {
      symbol: this.symbol,
      interval: this.interval,
      loaded: this.loaded,
      candles: this.bars.size,
      historyCandles: this.historyCandles,
      chartBars: data.length,
      volumeBars: this.volume.data().length,
      chartLast: data.length ? { ...data[data.length - 1] } : null,
      last: last ? { ...last } : null,
      moreHistory: this.nextCursor !== null,
      loadingOlder: this.loadingOlder,
      visibleFrom: this.chart.timeScale().getVisibleLogicalRange()?.from ?? null,
      liveUpdates: this.liveUpdates,
      lastLive: this.lastLive ? { ...this.lastLive } : null,
      legend: this.legend.textContent,
    };
  }
}

// --- the page ---------------------------------------------------------------------------------

// The stored key a typed ticker names (GET /symbols/{ticker}: X:BTCUSD and btc/usd name BTC-USD,
// aapl names AAPL; docs/design.md#symbols), with the server's word on it when it has no candles.
async function resolveTicker(text, known) {
  const wanted = text.trim();
  if (!wanted) return null;
  if (known.includes(wanted)) return { symbol: wanted, message: null };
  if (!TICKER.test(wanted)) {
    const message = `${wanted} is not a ticker (letters, digits and . : / _ ^ = + -)`;
    return { symbol: null, message };
  }
  try {
    const body = await getJson(`/symbols/${encodeURIComponent(wanted)}`);
    return { symbol: body.symbol, message: body.stored ? null : body.message };
  } catch (error) {
    if (error instanceof AuthError) throw error;
    const message = `No data for ${wanted} yet: its charts fill in when candles arrive.`;
    return { symbol: wanted, message };
  }
}

class Dashboard {
  constructor(intervals, symbols, first = null) {
    this.intervals = intervals.map((iv) => iv.name);
    this.intervalMs = new Map(intervals.map((iv) => [iv.name, iv.interval_ms]));
    this.symbols = symbols;
    this.panels = [];
    this.updates = 0;
    this.reconnects = 0;
    this.lastUpdate = null;
    this.state = "connecting";
    this.feed = new Feed(this);
    this.setSymbols(symbols);

    const saved = new URLSearchParams(location.hash.slice(1));
    this.symbol = first?.symbol || this.defaultSymbol();
    if (first?.message) this.notice(first.message);
    let wanted = (saved.get("intervals") || "").split(",").filter((iv) => this.intervalMs.has(iv));
    if (wanted.length === 0) wanted = DEFAULT_INTERVALS.filter((iv) => this.intervalMs.has(iv));
    if (wanted.length === 0) wanted = this.intervals.slice(0, 3);

    $("#symbol").value = this.symbol;
    $("#symbol-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.pickSymbol($("#symbol").value);
    });
    $("#symbol").addEventListener("change", () => {
      const symbol = $("#symbol").value.trim();
      if (this.symbols.includes(symbol)) this.pickSymbol(symbol); // picked from the list
    });
    $("#add-chart").addEventListener("click", () => this.addPanel(this.nextInterval()));

    for (const interval of wanted) this.addPanel(interval, false);
    this.saveState();
    this.feed.connect();
    setInterval(() => this.pollLag(), LAG_EVERY_MS);
    setInterval(() => this.drawStatus(), 1000);
  }

  defaultSymbol() {
    return PREFERRED_SYMBOLS.find((s) => this.symbols.includes(s)) || this.symbols[0] || "AAPL";
  }

  setSymbols(symbols) {
    this.symbols = symbols;
    const list = $("#symbol-list");
    list.replaceChildren(
      ...symbols.map((symbol) => {
        const option = document.createElement("option");
        option.value = symbol;
        return option;
      }),
    );
    $("#symbol-count").textContent = `${symbols.length} symbols`;
  }

  async pickSymbol(text) {
    let resolved = null;
    try {
      resolved = await resolveTicker(text, this.symbols);
    } catch {
      return; // the key form is shown
    }
    if (!resolved) return;
    this.notice(resolved.message);
    const symbol = resolved.symbol;
    if (!symbol) return;
    $("#symbol").value = symbol;
    if (symbol === this.symbol) return;
    this.symbol = symbol;
    for (const panel of this.panels) panel.setPair(symbol, panel.interval);
    this.saveState();
  }

  nextInterval() {
    const shown = new Set(this.panels.map((p) => p.interval));
    return this.intervals.find((iv) => !shown.has(iv)) || this.intervals[0];
  }

  addPanel(interval, save = true) {
    const panel = new Panel(this, interval);
    this.panels.push(panel);
    panel.setPair(this.symbol, interval);
    this.updateCloseButtons();
    if (save) this.saveState();
  }

  removePanel(panel) {
    if (this.panels.length <= 1) return;
    this.panels = this.panels.filter((p) => p !== panel);
    panel.destroy();
    this.updateCloseButtons();
    this.saveState();
  }

  updateCloseButtons() {
    for (const panel of this.panels) {
      panel.node.querySelector(".panel-close").hidden = this.panels.length <= 1;
    }
  }

  saveState() {
    const state = new URLSearchParams({
      symbol: this.symbol,
      intervals: this.panels.map((p) => p.interval).join(","),
    });
    history.replaceState(null, "", `${location.pathname}${location.search}#${state}`);
    document.title = `${this.symbol} · speedlayer`;
  }

  notice(text) {
    const node = $("#notice");
    node.hidden = !text;
    node.textContent = text || "";
  }

  // --- status line ---

  setStatus(state, text) {
    this.state = state;
    drawState(state, text);
  }

  updated() {
    this.updates += 1;
    this.lastUpdate = new Date();
  }

  reconnected() {
    this.reconnects += 1;
    this.drawStatus();
    getJson("/symbols")
      .then((body) => this.setSymbols(body.symbols))
      .catch(() => {}); // the list is a convenience; the charts do not depend on it
  }

  drawStatus() {
    $("#updates").textContent = this.updates.toLocaleString("en-US");
    $("#reconnects").textContent = String(this.reconnects);
    if (this.lastUpdate) {
      const ago = Math.max(0, Math.round((Date.now() - this.lastUpdate.getTime()) / 1000));
      $("#last-update").textContent = `${clock(this.lastUpdate)} (${ago} s ago)`;
    }
  }

  async pollLag() {
    if (!this.feed.isOpen) return;
    try {
      const text = await (await api("/metrics")).text();
      const match = /^speedlayer_feed_lag_seconds\s+(\S+)$/m.exec(text);
      const lag = match ? Number(match[1]) : Number.NaN;
      $("#lag").textContent = Number.isFinite(lag) ? `${lag.toFixed(1)} s` : "–";
    } catch {
      $("#lag").textContent = "–";
    }
  }

  // The WebSocket handshake failed: if the key is the reason, the REST answer says so.
  checkAccess() {
    getJson("/intervals").catch(() => {});
  }

  inspect() {
    return {
      state: this.state,
      status: $("#status-text").textContent,
      updates: this.updates,
      reconnects: this.reconnects,
      connections: this.feed.opened,
      symbol: this.symbol,
      panels: this.panels.map((p) => p.inspect()),
    };
  }
}

let dashboard = null;

function setUpKeyForm() {
  const form = $("#key-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    if (!key) return;
    auth.save(key);
    location.reload(); // start over with the key
  });
  $("#key-forget").addEventListener("click", () => {
    auth.forget();
    location.reload();
  });
  const button = $("#key-button");
  button.hidden = !auth.key;
  button.addEventListener("click", () => {
    form.hidden = !form.hidden;
  });
}

function showProblem(text) {
  const node = $("#notice");
  node.hidden = false;
  node.textContent = text;
}

async function main() {
  setUpKeyForm();
  try {
    LWC = await import("/dashboard/lightweight-charts.mjs");
  } catch {
    let detail = "";
    try {
      detail = (await (await fetch("/dashboard/lightweight-charts.mjs")).json()).message;
    } catch {
      // the server is not answering either
    }
    showProblem(`The chart library could not be loaded: ${detail || "is the server running?"}`);
    return;
  }
  for (let attempt = 0; ; attempt += 1) {
    try {
      const [intervals, symbols] = await Promise.all([getJson("/intervals"), getJson("/symbols")]);
      const saved = new URLSearchParams(location.hash.slice(1)).get("symbol");
      const first = saved ? await resolveTicker(saved, symbols.symbols) : null;
      showProblem("");
      $("#notice").hidden = true;
      dashboard = new Dashboard(intervals.intervals, symbols.symbols, first);
      window.speedlayer = dashboard;
      return;
    } catch (error) {
      if (error instanceof AuthError) return; // the key form is shown; saving it reloads
      showProblem(`The API does not answer (${error.message}); retrying…`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 1000 * (attempt + 1))));
    }
  }
}

main();

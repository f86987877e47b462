/**
 * sidecar-client.js: the browser client of the sidecar event hub. Speaks `sidecar.v1`.
 *
 * One dependency-free ES module (no build step). It is the npm package `sidecar-hub-client`
 * (versioned with the server, `sidecar-hub`), and the sidecar serves the same file at
 * `/client/sidecar-client.js`; its types are in `sidecar-client.d.ts` next to it.
 *
 * ```js
 * import { SidecarClient } from "sidecar-hub-client";
 * const client = new SidecarClient("ws://127.0.0.1:PORT/ws", {
 *   token,                              // from the sidecar's ready line (or getToken)
 *   channels: ["project:p1"],           // named channels, besides the default one
 *   resyncOnFirstConnect: true,         // load each channel's state in onResync too
 *   onResync: ({ channel }) => load(channel), // refetch: events may have been missed
 * });
 * client.on("stream:created", (payload, event) => addStream(event.channel, payload));
 * client.subscribe("chat:c9");
 * ```
 *
 * ## Protocol
 * - Connects offering the subprotocols `sidecar.v1` and `auth.<token>` (a browser cannot set
 *   headers; the server selects `sidecar.v1` and never echoes the token), with the named
 *   channels in `?channels=` and where each one stands in `?since=`.
 * - The first frame of every connection is `connection:status` with `{epoch, seq, recovered}`
 *   for the default channel and `channels: {name: {epoch, seq, recovered}}` for the named ones.
 *   Every event carries its channel's `seq` (and `channel`, unless it is the default one),
 *   contiguous within that channel's `epoch`.
 * - `channel:subscribe {channel, since?, token?}` after connect answers `channel:subscribed
 *   {channel, epoch, seq, recovered}` (or `channel:error {channel, code, message}`), then the
 *   channel's replay and live events; `channel:unsubscribe {channel}` answers
 *   `channel:unsubscribed {channel, reason}`.
 *
 * ## Algorithm (the same as the Python `sidecar.client.Subscriber`; the shared vectors in
 * `tests/data/client-vectors.json` check both)
 * - **Positions**: each channel (the default one and every named one) has a position
 *   `(epoch, seq)`: the last event dispatched, or where the hub said it stood. An event whose
 *   `seq` is not above its channel's is a duplicate and is dropped. A position is never taken
 *   from an answer with `recovered: true` (its `seq` is the latest; the replay that follows is
 *   older).
 * - **Reconnect** after any close but 1008 and 4500-4999, with full-jitter backoff
 *   `random(0, min(cap, base·2ⁿ))` for the n-th consecutive failed attempt (500 ms, 20 s); n
 *   resets once a connection stayed open for 5 s; the browser's `online` event retries at once.
 *   A browser cannot see why a handshake was refused (401, 403 look like 1006), so those are
 *   retried like network failures, at the capped pace. `getToken()` (sync or async) is called
 *   before every attempt, for credentials that must be refreshed.
 * - **Resume** every channel: the URL carries `channels=` and `since=` while it stays under
 *   `maxUrlLength` (4000 bytes: gunicorn refuses request lines over 4094); the channels that
 *   do not fit, and those with a subscription token (never in a URL), are subscribed by
 *   message after the status, paced under the hub's limit of 20 a second.
 * - **Resync** (`onResync` and the `"resync"` event, `{channel, reason, epoch, seq,
 *   previousEpoch, previousSeq}`; `channel` is `null` for the default channel): a channel came
 *   back with `recovered: false` (`new-epoch`: the hub restarted or forgot it;
 *   `not-recovered`: its window moved on) or skipped a `seq` (`gap`). The app reloads that
 *   channel's state. A channel's first position is not a resync unless
 *   `resyncOnFirstConnect` (reason `initial`). Resyncs follow the `connection:status` (or
 *   `channel:subscribed`) listeners and come before any later event.
 * - **Granted channels**: a channel the hub subscribes the connection to by itself (an
 *   identity's own `user:<id>` channel, its granted ones) is taken on like the app's own
 *   (dispatched, resumed), unless the app left it: then it is left again.
 * - **Errors** (`onError` and the `"error"` event, `{channel, code, message, retrying}`): the
 *   hub refused a channel (`channel:error`: `invalid`, `limit`, `forbidden`, `bad_token`,
 *   `token_expired` …) or unsubscribed it by itself (`revoked`): the channel is dropped
 *   (subscribe again to retry). `unavailable` is retried after a backoff (`retrying: true`).
 *   `unsupported`: a hub without channels; `token`: a token hook failed.
 * - **States** (`"state"` event): `connecting`, `open` (the status arrived), `reconnecting`
 *   (once per scheduled attempt, with `attempt` and `delay`), `closed` (by `close()` or a
 *   terminal close code; final).
 *
 * @module sidecar-client
 */

/** The subprotocol the sidecar selects; the token rides in a second one, `auth.<token>`. */
export const SUBPROTOCOL = "sidecar.v1";

/** This client's version: the same as the server release it ships with (`sidecar-hub`). */
export const VERSION = "0.2.0";

/** The longest request target (path and query) put in a URL (gunicorn's limit is 4094). */
export const MAX_URL_LENGTH = 4000;

/**
 * Reconnect timing in milliseconds.
 * @typedef {object} BackoffOptions
 * @property {number} [base] first ceiling of the random delay (default 500)
 * @property {number} [cap] largest ceiling (default 20000)
 * @property {number} [stableAfter] an open connection older than this resets the backoff (5000)
 */

/** @type {Readonly<Required<BackoffOptions>>} */
export const DEFAULT_BACKOFF = Object.freeze({ base: 500, cap: 20000, stableAfter: 5000 });

/**
 * The pace of `channel:*` messages: at most `limit` in any `window` ms (the hub closes with
 * 1008 beyond 20 a second, measured on arrival; 20 per 1.25 s leaves room for jitter).
 * @typedef {object} RateOptions
 * @property {number} [limit]
 * @property {number} [window]
 */
export const CHANNEL_RATE = Object.freeze({ limit: 20, window: 1250 });

/**
 * The delay before reconnect attempt number `attempt` (0-based): full jitter,
 * uniformly random in `[0, min(cap, base * 2 ** attempt))`.
 *
 * @param {number} attempt consecutive failed attempts so far
 * @param {BackoffOptions} [backoff]
 * @param {() => number} [random] a source of numbers in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, backoff = {}, random = Math.random) {
  const base = backoff.base ?? DEFAULT_BACKOFF.base;
  const cap = backoff.cap ?? DEFAULT_BACKOFF.cap;
  const ceiling = Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * ceiling);
}

/**
 * Whether a connection closed with `code` should be reopened.
 *
 * @param {number} code a WebSocket close code (1006 when the connection failed)
 * @returns {boolean}
 */
export function shouldReconnect(code) {
  return !(code === 1008 || (code >= 4500 && code <= 4999));
}

const CHANNEL_RE = /^[a-z][a-z0-9_-]{0,31}(?::[A-Za-z0-9._~-]{1,64}){0,3}$/;
const SINCE_RE = /^([A-Za-z0-9_-]{1,64}):([0-9]{1,18})$/;

/**
 * Whether `name` is a channel name: a namespace `[a-z][a-z0-9_-]{0,31}`, then 0-3 segments
 * `:[A-Za-z0-9._~-]{1,64}`, at most 128 bytes (`project:p1`, `doc:9:comments`).
 *
 * @param {unknown} name
 * @returns {name is string}
 */
export function isChannelName(name) {
  return typeof name === "string" && name.length <= 128 && CHANNEL_RE.test(name);
}

/**
 * The resume points of a `since` value as on the wire: `<epoch>:<seq>` for the default
 * channel (key `""`), `<channel>@<epoch>:<seq>` for a named one, comma-separated.
 *
 * @param {string} text
 * @returns {Map<string, Position>}
 */
export function parseSince(text) {
  /** @type {Map<string, Position>} */
  const points = new Map();
  for (const item of text.split(",")) {
    const at = item.lastIndexOf("@");
    const channel = at < 0 ? "" : item.slice(0, at);
    const match = SINCE_RE.exec(item.slice(at + 1));
    if (!match || (channel && !isChannelName(channel)) || points.has(channel)) {
      throw new TypeError(`SidecarClient: bad since item ${JSON.stringify(item.slice(0, 80))}`);
    }
    points.set(channel, { epoch: match[1], seq: Number(match[2]) });
  }
  return points;
}

/**
 * A sidecar event as it arrives on the wire.
 * @typedef {object} SidecarEvent
 * @property {string} type `namespace:kebab-case`
 * @property {Record<string, unknown>} payload
 * @property {string} timestamp RFC 3339, UTC
 * @property {number} [seq] its channel's seq (messages to this connection only have none)
 * @property {string} [channel] the named channel (absent: the default channel)
 */

/**
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} ConnectionState
 */

/**
 * Where a channel stands.
 * @typedef {object} Position
 * @property {string | null} epoch
 * @property {number | null} seq
 */

/**
 * What a `"state"` listener receives.
 * @typedef {object} StateChange
 * @property {ConnectionState} state
 * @property {ConnectionState | null} previous
 * @property {number} attempt consecutive failed attempts (0 when open or on the first try)
 * @property {number} [delay] `reconnecting`: milliseconds until the next attempt
 * @property {number} [code] `reconnecting`/`closed`: the close code that ended the connection
 * @property {string} [reason] `reconnecting`/`closed`: its reason
 * @property {string | null} [epoch] `open`: the default channel's epoch
 * @property {number | null} [seq] `open`: the default channel's seq when the client joined
 * @property {boolean} [recovered] `open`: whether the hub replayed what the default missed
 */

/**
 * What `onResync` and `"resync"` listeners receive: reload that channel's state.
 * @typedef {object} ResyncInfo
 * @property {string | null} channel the named channel, `null` for the default one
 * @property {"initial" | "new-epoch" | "not-recovered" | "gap"} reason
 * @property {string | null} epoch the epoch from now on
 * @property {number | null} seq the seq from which events continue
 * @property {string | null} previousEpoch
 * @property {number | null} previousSeq the last seq dispatched before
 */

/**
 * What `onError` and `"error"` listeners receive.
 * @typedef {object} ErrorInfo
 * @property {string | null} channel the channel concerned (`null`: the connection)
 * @property {string} code a `channel:error` code, `revoked`, `unsupported` or `token`
 * @property {string} message
 * @property {boolean} retrying whether the client tries again by itself
 */

/**
 * A channel to join, with where to resume it and its subscription token.
 * @typedef {object} ChannelSpec
 * @property {string} channel
 * @property {string} [since] `<epoch>:<seq>`
 * @property {string | (() => string | Promise<string>)} [token] a subscription token, or a
 *   function returning one (called before each subscribe)
 */

/**
 * @typedef {object} SidecarClientOptions
 * @property {string | null} [token] the sidecar token (omit with `--no-auth`)
 * @property {() => string | null | undefined | Promise<string | null | undefined>} [getToken]
 *   called before every connection attempt (wins over `token`)
 * @property {(string | ChannelSpec)[]} [channels] named channels to join
 * @property {string} [since] where to resume, as on the wire (`E:5,project:p1@H:2`)
 * @property {BackoffOptions} [backoff] reconnect timing (tests use small values)
 * @property {(info: ResyncInfo) => void} [onResync] refetch a channel's state
 * @property {(change: StateChange) => void} [onState] connection state changes
 * @property {(info: ErrorInfo) => void} [onError] a channel was refused or dropped
 * @property {boolean} [resyncOnFirstConnect] also call `onResync` for first positions
 * @property {number} [maxUrlLength] longest request target (default 4000)
 * @property {RateOptions} [channelRate] the pace of channel messages
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default: the global one)
 * @property {() => number} [random] jitter source (default `Math.random`)
 */

/**
 * Counters of one client, for display and tests.
 * @typedef {object} ClientStats
 * @property {number} received envelopes dispatched
 * @property {number} duplicates envelopes dropped because their seq was already seen
 * @property {number} gaps seq gaps seen on a live connection
 * @property {number} resyncs resync notifications
 * @property {number} connections connections that reached `open`
 * @property {number} unwanted events of channels not subscribed (any more), dropped
 * @property {number} ignored frames that are not envelopes
 */

const LOCAL_EVENTS = new Set(["*", "state", "resync", "error"]);
const RESERVED = new Set(["connection", "channel"]);
const DEFAULT = "";

/**
 * @typedef {{token: ChannelSpec["token"], attempts: number, notBefore: number}} Wanted
 * @typedef {{kind: "channel:subscribe" | "channel:unsubscribe", name: string, token?: string | null, waiting?: boolean}} Outgoing
 */

/**
 * `{epoch, seq, recovered}` of an entry in an answer, if well formed.
 * @param {unknown} value
 * @returns {{epoch: string, seq: number, recovered: boolean} | null}
 */
function stateOf(value) {
  if (!value || typeof value !== "object") return null;
  const { epoch, seq, recovered } = /** @type {Record<string, unknown>} */ (value);
  if (typeof epoch !== "string" || !Number.isInteger(seq)) return null;
  return { epoch, seq: /** @type {number} */ (seq), recovered: recovered === true };
}

/** @param {Position | undefined} position */
function sinceOf(position) {
  return position && position.epoch !== null && position.seq !== null
    ? `${position.epoch}:${position.seq}`
    : null;
}

/** A WebSocket client of the sidecar that reconnects, resumes and never goes silently stale. */
export class SidecarClient {
  /** @type {URL} */ #url;
  /** @type {Required<BackoffOptions>} */ #backoff;
  /** @type {Required<RateOptions>} */ #rate;
  /** @type {SidecarClientOptions} */ #options;
  /** @type {Map<string, Set<Function>>} */ #listeners = new Map();
  /** @type {WebSocket | null} */ #ws = null;
  /** @type {ConnectionState | null} */ #state = null;
  /** @type {Map<string, Wanted>} */ #wanted = new Map();
  /** @type {Map<string, Position>} */ #positions = new Map();
  /** @type {Set<string>} */ #answered = new Set();
  /** @type {Set<string>} */ #declined = new Set(); // channels the app left
  /** @type {Record<string, unknown> | null} */ #status = null;
  // this connection's state
  #connecting = false; // a connection is being made or is open
  #connected = false; // its connection:status arrived
  /** @type {string[]} */ #inUrl = [];
  /** @type {Outgoing[]} */ #queue = [];
  /** @type {Set<string>} */ #awaiting = new Set();
  /** @type {Set<string>} */ #joined = new Set();
  /** @type {number[]} */ #sent = [];
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #queueTimer;
  #attempt = 0;
  #connectionId = 0;
  #closed = false;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #retryTimer;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #stableTimer;
  /** @type {ClientStats} */ #stats = {
    received: 0,
    duplicates: 0,
    gaps: 0,
    resyncs: 0,
    connections: 0,
    unwanted: 0,
    ignored: 0,
  };
  #onOnline = () => this.#reconnectNow();

  /**
   * Start connecting (on the next microtask, so listeners added right after the constructor
   * see every state change and event).
   *
   * @param {string | URL} url the hub endpoint, e.g. `ws://127.0.0.1:3008/ws`
   *   (`http:`/`https:` are turned into `ws:`/`wss:`)
   * @param {SidecarClientOptions} [options]
   */
  constructor(url, options = {}) {
    const parsed = new URL(url, globalThis.location?.href);
    if (parsed.protocol === "http:") parsed.protocol = "ws:";
    else if (parsed.protocol === "https:") parsed.protocol = "wss:";
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new TypeError(`SidecarClient: not a WebSocket URL: ${parsed.href}`);
    }
    this.#url = parsed;
    this.#options = options;
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#rate = { ...CHANNEL_RATE, ...options.channelRate };
    for (const spec of options.channels ?? []) {
      const channel = typeof spec === "string" ? spec : spec.channel;
      this.subscribe(channel, typeof spec === "string" ? {} : spec);
    }
    for (const [channel, point] of options.since ? parseSince(options.since) : []) {
      if (channel && !this.#wanted.has(channel)) {
        throw new TypeError(`SidecarClient: since names ${channel}, which is not in channels`);
      }
      this.#positions.set(channel, point);
    }
    globalThis.addEventListener?.("online", this.#onOnline);
    queueMicrotask(() => this.#connect());
  }

  /** @returns {ConnectionState} the connection state (`connecting` until the first attempt) */
  get state() {
    return this.#state ?? "connecting";
  }

  /** @returns {string | null} the default channel's epoch */
  get epoch() {
    return this.#positions.get(DEFAULT)?.epoch ?? null;
  }

  /** @returns {number | null} the default channel's last seq dispatched (or joined at) */
  get seq() {
    return this.#positions.get(DEFAULT)?.seq ?? null;
  }

  /** @returns {string[]} the named channels subscribed (or being subscribed), in order */
  get channels() {
    return [...this.#wanted.keys()];
  }

  /** @returns {Record<string, unknown> | null} the last `connection:status` payload */
  get status() {
    return this.#status;
  }

  /**
   * Where a channel stands (`null`/omitted: the default channel); `null` when unknown.
   * @param {string | null} [channel]
   * @returns {Position | null}
   */
  position(channel = null) {
    const position = this.#positions.get(channel ?? DEFAULT);
    return position ? { ...position } : null;
  }

  /** @returns {ClientStats} a copy of the counters */
  get stats() {
    return { ...this.#stats };
  }

  /**
   * Listen to an event type (`"stream:created"`), to every server event (`"*"`), or to the
   * client's own `"state"`, `"resync"` and `"error"` events.
   *
   * @param {string} type
   * @param {Function} fn `(payload, envelope)` for an event type; `(envelope)` for `"*"`;
   *   `(change)` for `"state"`; `(info)` for `"resync"` and `"error"`
   * @returns {() => void} a function that removes the listener
   */
  on(type, fn) {
    if (typeof fn !== "function") throw new TypeError("SidecarClient.on: fn must be a function");
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /**
   * Remove a listener added with {@link SidecarClient#on}.
   *
   * @param {string} type
   * @param {Function} fn
   */
  off(type, fn) {
    const set = this.#listeners.get(type);
    if (set?.delete(fn) && set.size === 0) this.#listeners.delete(type);
  }

  /**
   * Join a named channel, now or with the next connection; resume it from `since`
   * (`<epoch>:<seq>`) if given. Does nothing if it is already subscribed.
   *
   * @param {string} channel
   * @param {{since?: string, token?: ChannelSpec["token"]}} [options]
   * @returns {boolean} whether it was added
   */
  subscribe(channel, options = {}) {
    if (!isChannelName(channel)) {
      throw new TypeError(`SidecarClient: not a channel name: ${JSON.stringify(channel)}`);
    }
    if (this.#wanted.has(channel)) return false;
    this.#declined.delete(channel);
    const point = options.since === undefined ? undefined : SINCE_RE.exec(options.since);
    if (point === null) throw new TypeError(`SidecarClient: bad since ${options.since}`);
    this.#wanted.set(channel, { token: options.token, attempts: 0, notBefore: 0 });
    if (point) this.#positions.set(channel, { epoch: point[1], seq: Number(point[2]) });
    if (this.#connecting) {
      // too late for this connection's URL: by message, once the status has arrived
      this.#queue.push({ kind: "channel:subscribe", name: channel });
      this.#flush();
    }
    return true;
  }

  /**
   * Leave a named channel: nothing of it is dispatched after this call, and its position is
   * forgotten.
   *
   * @param {string} channel
   * @returns {boolean} whether it was subscribed
   */
  unsubscribe(channel) {
    if (!this.#wanted.delete(channel)) return false;
    this.#declined.add(channel);
    this.#positions.delete(channel);
    this.#answered.delete(channel);
    const pending = this.#queue.findIndex((o) => o.kind === "channel:subscribe" && o.name === channel);
    if (pending >= 0) this.#queue.splice(pending, 1); // never sent: nothing to undo
    else if (this.#awaiting.has(channel) || this.#joined.has(channel)) {
      this.#queue.push({ kind: "channel:unsubscribe", name: channel });
      this.#flush();
    }
    return true;
  }

  /**
   * Send a client -> server event (e.g. `chat:send`) if the connection is open.
   *
   * @param {string} type
   * @param {Record<string, unknown>} payload
   * @returns {boolean} whether it was handed to the socket (nothing is queued while away)
   */
  send(type, payload) {
    if (RESERVED.has(String(type).split(":")[0])) {
      throw new TypeError(`SidecarClient.send: ${type} is the hub's own (use subscribe)`);
    }
    const ws = this.#ws;
    if (this.#state !== "open" || !ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify({ type, payload, timestamp: new Date().toISOString() }));
    return true;
  }

  /** Close the connection and stop reconnecting, for good. Idempotent. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopTimers();
    globalThis.removeEventListener?.("online", this.#onOnline);
    const ws = this.#ws;
    this.#ws = null;
    this.#connectionId += 1; // ignore whatever the old socket still reports
    this.#lostConnection();
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        // already closing
      }
    }
    this.#setState("closed", { code: 1000, reason: "closed by the application" });
  }

  // -- connection --------------------------------------------------------------------------

  #connect() {
    if (this.#closed) return;
    this.#retryTimer = undefined;
    if (this.#state === null) this.#setState("connecting", {});
    const id = ++this.#connectionId;
    const hook = this.#options.getToken;
    if (!hook) {
      this.#open(id, this.#options.token ?? null);
      return;
    }
    let token;
    try {
      token = hook();
    } catch (err) {
      this.#tokenFailed(id, err);
      return;
    }
    if (token && typeof (/** @type {any} */ (token).then) === "function") {
      /** @type {Promise<string | null | undefined>} */ (token).then(
        (value) => this.#open(id, value ?? null),
        (err) => this.#tokenFailed(id, err),
      );
    } else {
      this.#open(id, /** @type {string | null | undefined} */ (token) ?? null);
    }
  }

  /**
   * @param {number} id
   * @param {unknown} err
   */
  #tokenFailed(id, err) {
    if (id !== this.#connectionId || this.#closed) return;
    const message = `getToken failed: ${err}`;
    this.#error({ channel: null, code: "token", message, retrying: true });
    this.#lost(1006, message);
  }

  /**
   * @param {number} id
   * @param {string | null} token
   */
  #open(id, token) {
    if (id !== this.#connectionId || this.#closed) return;
    const protocols = token ? [SUBPROTOCOL, `auth.${token}`] : [SUBPROTOCOL];
    const url = `${this.#url.protocol}//${this.#url.host}${this.#connectTarget()}`;
    const Impl = this.#options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new Impl(url, protocols);
    } catch (err) {
      this.#lost(1006, String(err));
      return;
    }
    this.#ws = ws;
    ws.onerror = () => {}; // the close event that follows says what happened (Node's ws throws
    // on an error event nobody listens to)
    ws.onmessage = (ev) => {
      if (id === this.#connectionId) this.#onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (id === this.#connectionId) this.#lost(ev.code, ev.reason);
    };
  }

  /** The request target of the next connection; queues the channels that do not fit. */
  #connectTarget() {
    this.#lostConnection();
    this.#connecting = true;
    const path = this.#url.pathname;
    const params = this.#url.search
      .slice(1)
      .split("&")
      .filter((p) => p && !["channels", "since"].includes(p.split("=")[0]));
    /** @type {string[]} */
    const items = [];
    const own = sinceOf(this.#positions.get(DEFAULT));
    if (own) items.push(own);
    /** @type {string[]} */
    const names = [];
    let full = false; // once one channel does not fit, the rest go by message too
    const limit = this.#options.maxUrlLength ?? MAX_URL_LENGTH;
    for (const [name, wanted] of this.#wanted) {
      const since = sinceOf(this.#positions.get(name));
      const item = since ? [`${name}@${since}`] : [];
      const trial = target(path, params, [...names, name], [...items, ...item]);
      full ||= wanted.token === undefined && new TextEncoder().encode(trial).length > limit;
      if (wanted.token === undefined && !full) {
        names.push(name);
        items.push(...item);
      } else {
        this.#queue.push({ kind: "channel:subscribe", name });
      }
    }
    this.#inUrl = names;
    this.#awaiting = new Set(names);
    return target(path, params, names, items);
  }

  /** Forget what belonged to the connection (positions stay). */
  #lostConnection() {
    this.#connecting = false;
    this.#connected = false;
    this.#inUrl = [];
    this.#queue = [];
    this.#awaiting.clear();
    this.#joined.clear();
    this.#sent = [];
    clearTimeout(this.#queueTimer);
    this.#queueTimer = undefined;
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #lost(code, reason) {
    this.#ws = null;
    this.#lostConnection();
    clearTimeout(this.#stableTimer);
    if (this.#closed) return;
    if (!shouldReconnect(code)) {
      this.#closed = true;
      this.#stopTimers();
      globalThis.removeEventListener?.("online", this.#onOnline);
      this.#setState("closed", { code, reason });
      return;
    }
    const delay = backoffDelay(this.#attempt, this.#backoff, this.#options.random);
    this.#attempt += 1;
    this.#setState("reconnecting", { delay, code, reason });
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #reconnectNow() {
    if (this.#closed || this.#retryTimer === undefined) return;
    clearTimeout(this.#retryTimer);
    this.#connect();
  }

  #stopTimers() {
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#stableTimer);
    clearTimeout(this.#queueTimer);
    this.#retryTimer = undefined;
  }

  // -- channel messages --------------------------------------------------------------------

  /** Send the queued channel messages that may go now; schedule the rest. */
  #flush() {
    clearTimeout(this.#queueTimer);
    this.#queueTimer = undefined;
    const ws = this.#ws;
    if (!this.#connected || !ws || ws.readyState !== 1) return;
    const now = Date.now();
    let next = Infinity;
    for (const out of [...this.#queue]) {
      const wanted = this.#wanted.get(out.name);
      if (out.kind === "channel:subscribe") {
        if (!wanted) {
          this.#dequeue(out);
          continue;
        }
        if (wanted.notBefore > now) {
          next = Math.min(next, wanted.notBefore);
          continue;
        }
        if (out.waiting || !this.#tokenReady(out, wanted)) continue;
      }
      const allowed = this.#nextAllowed(now);
      if (allowed > now) {
        next = Math.min(next, allowed);
        break;
      }
      this.#dequeue(out);
      /** @type {Record<string, unknown>} */
      const payload = { channel: out.name };
      if (out.kind === "channel:subscribe") {
        const since = sinceOf(this.#positions.get(out.name));
        if (since) payload.since = since;
        if (out.token) payload.token = out.token;
        this.#awaiting.add(out.name);
      }
      this.#sent.push(now);
      if (this.#sent.length > this.#rate.limit) this.#sent.shift();
      ws.send(JSON.stringify({ type: out.kind, payload }));
    }
    if (next !== Infinity) {
      this.#queueTimer = setTimeout(() => this.#flush(), Math.max(0, next - Date.now()));
    }
  }

  /** @param {number} now */
  #nextAllowed(now) {
    return this.#sent.length < this.#rate.limit ? now : Math.max(now, this.#sent[0] + this.#rate.window);
  }

  /**
   * Resolve a subscription token (a value, or a function, sync or async); whether it is ready.
   * @param {Outgoing} out
   * @param {Wanted} wanted
   */
  #tokenReady(out, wanted) {
    if (out.token !== undefined || wanted.token === undefined) return true;
    const id = this.#connectionId;
    let value;
    try {
      value = typeof wanted.token === "function" ? wanted.token() : wanted.token;
    } catch (err) {
      this.#tokenError(out, err);
      return false;
    }
    if (value && typeof (/** @type {any} */ (value).then) === "function") {
      out.waiting = true;
      /** @type {Promise<string>} */ (value).then(
        (token) => {
          if (id !== this.#connectionId) return;
          out.waiting = false;
          out.token = token;
          this.#flush();
        },
        (err) => {
          if (id === this.#connectionId) this.#tokenError(out, err);
        },
      );
      return false;
    }
    out.token = /** @type {string} */ (value);
    return true;
  }

  /**
   * @param {Outgoing} out
   * @param {unknown} err
   */
  #tokenError(out, err) {
    this.#dequeue(out);
    this.#drop(out.name, "token", `token hook failed: ${err}`);
  }

  /** @param {Outgoing} out */
  #dequeue(out) {
    const index = this.#queue.indexOf(out);
    if (index >= 0) this.#queue.splice(index, 1);
  }

  // -- frames ------------------------------------------------------------------------------

  /** @param {unknown} data */
  #onMessage(data) {
    if (typeof data !== "string") return; // the sidecar sends text frames only
    let envelope;
    try {
      envelope = JSON.parse(data);
    } catch {
      envelope = null;
    }
    if (!envelope || typeof envelope !== "object" || typeof envelope.type !== "string") {
      this.#stats.ignored += 1;
      return;
    }
    const payload = envelope.payload;
    const control = envelope.seq === undefined;
    if (control && envelope.type === "connection:status") {
      this.#onStatus(envelope);
    } else if (
      control &&
      ["channel:subscribed", "channel:unsubscribed", "channel:error"].includes(envelope.type) &&
      payload &&
      typeof payload.channel === "string"
    ) {
      this.#onChannelFrame(envelope);
    } else {
      this.#onEvent(envelope);
    }
  }

  /** @param {SidecarEvent} envelope */
  #onStatus(envelope) {
    const payload = envelope.payload && typeof envelope.payload === "object" ? envelope.payload : {};
    this.#connected = true;
    this.#status = payload;
    /** @type {ResyncInfo[]} */
    const resyncs = [];
    /** @type {ErrorInfo[]} */
    const errors = [];
    const own = this.#apply(DEFAULT, stateOf(payload));
    if (own) resyncs.push(own);
    const states = payload.channels;
    for (const name of this.#inUrl) {
      if (!this.#wanted.has(name)) continue; // unsubscribed while connecting
      const state = states && typeof states === "object" ? stateOf(/** @type {any} */ (states)[name]) : null;
      if (state) {
        this.#join(name);
        const resync = this.#apply(name, state);
        if (resync) resyncs.push(resync);
      } else if (!states || typeof states !== "object") {
        errors.push(this.#dropInfo(name, "unsupported", "the hub did not answer for channels"));
      } // else refused at connect: its channel:error follows
    }
    // channels the hub subscribed this connection to by itself (an identity's own user:
    // channel, its granted ones): kept and resumed like the app's own, unless the app left one
    for (const [name, value] of states && typeof states === "object" ? Object.entries(states) : []) {
      const state = stateOf(value);
      if (this.#inUrl.includes(name) || !state) continue;
      if (this.#declined.has(name)) {
        this.#queue.push({ kind: "channel:unsubscribe", name });
        continue;
      }
      if (!this.#wanted.has(name)) {
        this.#wanted.set(name, { token: undefined, attempts: 0, notBefore: 0 });
      } else {
        const queued = this.#queue.findIndex((o) => o.kind === "channel:subscribe" && o.name === name);
        if (queued >= 0) this.#queue.splice(queued, 1); // granted before it was asked for
      }
      this.#join(name);
      const resync = this.#apply(name, state);
      if (resync) resyncs.push(resync);
    }
    this.#stats.connections += 1;
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      this.#attempt = 0;
    }, this.#backoff.stableAfter);
    const own2 = stateOf(payload);
    this.#setState("open", {
      epoch: own2?.epoch ?? null,
      seq: own2?.seq ?? null,
      recovered: payload.recovered === true,
      attempt: this.#attempt,
    });
    this.#dispatch(envelope);
    for (const info of resyncs) this.#resync(info);
    for (const info of errors) this.#error(info);
    this.#flush();
  }

  /** @param {SidecarEvent} envelope */
  #onChannelFrame(envelope) {
    const payload = /** @type {Record<string, any>} */ (envelope.payload);
    const name = /** @type {string} */ (payload.channel);
    const wanted = this.#wanted.has(name);
    this.#dispatch(envelope);
    if (envelope.type === "channel:subscribed") {
      const state = stateOf(payload);
      if (wanted && this.#awaiting.has(name) && state) {
        this.#join(name);
        const resync = this.#apply(name, state);
        if (resync) this.#resync(resync);
      }
      return;
    }
    const message = typeof payload.message === "string" ? payload.message : "";
    this.#awaiting.delete(name);
    if (envelope.type === "channel:unsubscribed") {
      this.#joined.delete(name);
      if (wanted && payload.reason !== "client") {
        const reason = typeof payload.reason === "string" && payload.reason ? payload.reason : "unsubscribed";
        this.#drop(name, reason, `unsubscribed by the hub (${reason})`);
      }
      return;
    }
    const code = typeof payload.code === "string" ? payload.code : "unknown";
    if (!wanted || code === "already_subscribed") {
      this.#error({ channel: name, code, message, retrying: false });
    } else if (code === "unavailable") {
      const entry = /** @type {Wanted} */ (this.#wanted.get(name));
      entry.notBefore = Date.now() + backoffDelay(entry.attempts, this.#backoff, this.#options.random);
      entry.attempts += 1;
      this.#queue.push({ kind: "channel:subscribe", name });
      this.#error({ channel: name, code, message, retrying: true });
      this.#flush();
    } else {
      this.#drop(name, code, message);
    }
  }

  /** @param {SidecarEvent} envelope */
  #onEvent(envelope) {
    const name = typeof envelope.channel === "string" ? envelope.channel : DEFAULT;
    if (name && (!this.#wanted.has(name) || !this.#joined.has(name))) {
      this.#stats.unwanted += 1;
      return;
    }
    const seq = envelope.seq;
    if (!Number.isInteger(seq)) {
      this.#dispatch(envelope);
      return;
    }
    const known = this.#positions.get(name);
    if (!known || known.seq === null) {
      this.#positions.set(name, { epoch: known?.epoch ?? null, seq: /** @type {number} */ (seq) });
    } else if (/** @type {number} */ (seq) <= known.seq) {
      this.#stats.duplicates += 1;
      return;
    } else {
      this.#positions.set(name, { epoch: known.epoch, seq: /** @type {number} */ (seq) });
      if (seq !== known.seq + 1) {
        this.#stats.gaps += 1;
        this.#resync({
          channel: name || null,
          reason: "gap",
          epoch: known.epoch,
          seq: /** @type {number} */ (seq),
          previousEpoch: known.epoch,
          previousSeq: known.seq,
        });
      }
    }
    this.#dispatch(envelope);
  }

  // -- positions ---------------------------------------------------------------------------

  /** @param {string} name */
  #join(name) {
    this.#awaiting.delete(name);
    this.#joined.add(name);
    const wanted = this.#wanted.get(name);
    if (wanted) wanted.attempts = 0;
  }

  /**
   * The hub says where `name` stands (`state`; `null`: a hub without positions): update its
   * position, and say whether the app must reload the channel.
   *
   * @param {string} name
   * @param {{epoch: string, seq: number, recovered: boolean} | null} state
   * @returns {ResyncInfo | null}
   */
  #apply(name, state) {
    const previous = this.#positions.get(name);
    const fresh = !this.#answered.has(name);
    this.#answered.add(name);
    if (!state) {
      this.#positions.set(name, { epoch: null, seq: null });
      return fresh ? this.#initial(name) : this.#info(name, "not-recovered", previous);
    }
    const resumed = sinceOf(previous) !== null;
    if (state.recovered && resumed) return null; // the replay follows; the position stays
    this.#positions.set(name, { epoch: state.epoch, seq: state.seq });
    if (!previous || !resumed) {
      return fresh ? this.#initial(name) : this.#info(name, "not-recovered", previous);
    }
    return this.#info(name, state.epoch !== previous.epoch ? "new-epoch" : "not-recovered", previous);
  }

  /** @param {string} name */
  #initial(name) {
    return this.#options.resyncOnFirstConnect ? this.#info(name, "initial", undefined) : null;
  }

  /**
   * @param {string} name
   * @param {ResyncInfo["reason"]} reason
   * @param {Position | undefined} previous
   * @returns {ResyncInfo}
   */
  #info(name, reason, previous) {
    const now = /** @type {Position} */ (this.#positions.get(name));
    return {
      channel: name || null,
      reason,
      epoch: now.epoch,
      seq: now.seq,
      previousEpoch: previous?.epoch ?? null,
      previousSeq: previous?.seq ?? null,
    };
  }

  /**
   * @param {string} name
   * @param {string} code
   * @param {string} message
   */
  #drop(name, code, message) {
    this.#error(this.#dropInfo(name, code, message));
  }

  /**
   * Forget `name`; the error to report.
   * @param {string} name
   * @param {string} code
   * @param {string} message
   * @returns {ErrorInfo}
   */
  #dropInfo(name, code, message) {
    // a queued (re)subscribe of it must not go out any more
    this.#queue = this.#queue.filter((o) => !(o.kind === "channel:subscribe" && o.name === name));
    this.#wanted.delete(name);
    this.#positions.delete(name);
    this.#answered.delete(name);
    this.#joined.delete(name);
    this.#awaiting.delete(name);
    return { channel: name, code, message, retrying: false };
  }

  // -- listeners ---------------------------------------------------------------------------

  /** @param {ResyncInfo} info */
  #resync(info) {
    this.#stats.resyncs += 1;
    this.#call(this.#options.onResync, info);
    this.#emit("resync", info);
  }

  /** @param {ErrorInfo} info */
  #error(info) {
    this.#call(this.#options.onError, info);
    this.#emit("error", info);
  }

  /** @param {SidecarEvent} envelope */
  #dispatch(envelope) {
    this.#stats.received += 1;
    if (!LOCAL_EVENTS.has(envelope.type)) this.#emit(envelope.type, envelope.payload, envelope);
    this.#emit("*", envelope);
  }

  /**
   * @param {ConnectionState} state
   * @param {Partial<StateChange>} details
   */
  #setState(state, details) {
    const previous = this.#state;
    this.#state = state;
    /** @type {StateChange} */
    const change = { state, previous, attempt: this.#attempt, ...details };
    this.#call(this.#options.onState, change);
    this.#emit("state", change);
  }

  /**
   * @param {string} type
   * @param {...unknown} args
   */
  #emit(type, ...args) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) this.#call(fn, ...args);
  }

  /**
   * Call a listener; an exception is reported, never allowed to break delivery.
   * @param {Function | undefined} fn
   * @param {...unknown} args
   */
  #call(fn, ...args) {
    if (!fn) return;
    try {
      fn(...args);
    } catch (err) {
      if (typeof globalThis.reportError === "function") globalThis.reportError(err);
      else console.error(err);
    }
  }
}

/**
 * @param {string} path
 * @param {string[]} params
 * @param {string[]} names
 * @param {string[]} items
 */
function target(path, params, names, items) {
  const query = [...params];
  if (names.length) query.push(`channels=${names.join(",")}`);
  if (items.length) query.push(`since=${items.join(",")}`);
  return query.length ? `${path}?${query.join("&")}` : path;
}

/**
 * sidecar-client.js: the browser client of the sidecar event hub.
 *
 * One dependency-free ES module (no build step). The sidecar serves it at
 * `/client/sidecar-client.js`; its types are in `sidecar-client.d.ts` next to it.
 *
 * ```js
 * import { SidecarClient } from "http://127.0.0.1:PORT/client/sidecar-client.js";
 * const client = new SidecarClient("ws://127.0.0.1:PORT/ws", {
 *   token,                        // from the sidecar's ready line
 *   resyncOnFirstConnect: true,   // load the initial state in onResync too
 *   onResync: () => loadState(),  // refetch: events may have been missed
 * });
 * client.on("stream:created", (payload) => addStream(payload.streamId));
 * client.on("state", ({ state }) => showConnection(state));
 * ```
 *
 * ## Protocol
 * - Connects to the hub offering the subprotocols `sidecar.v1` and `auth.<token>` (a browser
 *   cannot set headers; the server selects `sidecar.v1` and never echoes the token).
 * - The first frame of every connection is `connection:status` with `{epoch, seq, recovered}`;
 *   every broadcast carries a `seq`, contiguous within one `epoch` (one run of the sidecar).
 * - After a drop the client reconnects with `?since=<epoch>:<seq>` (the last event it
 *   dispatched); the hub answers `recovered: true` and replays what was missed, or
 *   `recovered: false` (it restarted, or the replay window no longer reaches back).
 *
 * ## Algorithm
 * - **Dispatch**: each envelope goes to the listeners of its `type` as `(payload, envelope)`,
 *   then to the `"*"` listeners as `(envelope)`. An envelope whose `seq` is not above the last
 *   one seen is a duplicate and is dropped. Names without a `:` are the client's own events
 *   (`"state"`, `"resync"`): server event names are always `namespace:kebab-case`.
 * - **Resync** (`onResync` option and `"resync"` event): called when a reconnect comes back
 *   with `recovered: false` (reason `"new-epoch"` or `"not-recovered"`), or when a `seq` gap
 *   shows on a live connection (reason `"gap"`). The app must then refetch its state. The very
 *   first connection is *not* a resync by default (the app loads its initial state anyway);
 *   with `resyncOnFirstConnect: true` it is (reason `"initial"`), which lets the app load its
 *   state in one place, after the socket is subscribed, so nothing can fall between the load
 *   and the first event. `onResync` runs after the state turned `open` and after the
 *   `connection:status` listeners, before any later event is dispatched.
 * - **Reconnect**: exponential backoff with full jitter, `delay = random(0, min(cap, base·2ⁿ))`
 *   for the n-th consecutive failed attempt (base 500 ms, cap 20 s); n resets once a
 *   connection has stayed open for 5 s. The browser's `online` event triggers an immediate
 *   attempt. A browser cannot see why a handshake was refused (401, 403: it only reports
 *   close 1006), so refused handshakes are retried like network failures, at the capped pace.
 * - **Close codes** that stop the client for good (state `closed`): 4500–4999 (the sidecar's
 *   "do not reconnect" class) and 1008 (policy violation: retrying cannot help). Every other
 *   code reconnects: 1001 (sidecar restarting), 1006 (network), 1011 (server error), 4000–4499
 *   (the "reconnect" class, e.g. 4008 slow consumer), and also 1003/1009, which answer one bad
 *   message this page sent (binary, too big): the connection itself is fine to reopen.
 * - **States** (`"state"` event, `state` getter): `connecting` (first attempt), `open` (the
 *   `connection:status` frame arrived), `reconnecting` (waiting for or making another attempt;
 *   emitted once per scheduled attempt with its `attempt` number and `delay`), `closed` (by
 *   `close()` or a terminal close code; final).
 *
 * @module sidecar-client
 */

/** The subprotocol the sidecar selects; the token rides in a second one, `auth.<token>`. */
export const SUBPROTOCOL = "sidecar.v1";

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

/**
 * A sidecar event as it arrives on the wire.
 * @typedef {object} SidecarEvent
 * @property {string} type `namespace:kebab-case`
 * @property {Record<string, unknown>} payload
 * @property {string} timestamp RFC 3339, UTC
 * @property {number} [seq] on broadcasts: contiguous within one epoch
 */

/**
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} ConnectionState
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
 * @property {string | null} [epoch] `open`: the sidecar run
 * @property {number | null} [seq] `open`: the last broadcast seq when the client joined
 * @property {boolean} [recovered] `open`: whether the hub replayed what was missed
 */

/**
 * What `onResync` and `"resync"` listeners receive.
 * @typedef {object} ResyncInfo
 * @property {"initial" | "new-epoch" | "not-recovered" | "gap"} reason
 * @property {string | null} epoch the epoch from now on
 * @property {number | null} seq the seq from which events continue
 * @property {string | null} previousEpoch
 * @property {number | null} previousSeq the last seq dispatched before
 */

/**
 * @typedef {object} SidecarClientOptions
 * @property {string | null} [token] the sidecar token (omit with `--no-auth`)
 * @property {BackoffOptions} [backoff] reconnect timing (tests use small values)
 * @property {(info: ResyncInfo) => void} [onResync] refetch the app state
 * @property {(change: StateChange) => void} [onState] connection state changes
 * @property {boolean} [resyncOnFirstConnect] also call `onResync` on the first connection
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
 */

const LOCAL_EVENTS = new Set(["*", "state", "resync"]);

/** A WebSocket client of the sidecar that reconnects, resumes and never goes silently stale. */
export class SidecarClient {
  /** @type {URL} */ #url;
  /** @type {string[]} */ #protocols;
  /** @type {Required<BackoffOptions>} */ #backoff;
  /** @type {SidecarClientOptions} */ #options;
  /** @type {Map<string, Set<Function>>} */ #listeners = new Map();
  /** @type {WebSocket | null} */ #ws = null;
  /** @type {ConnectionState | null} */ #state = null;
  /** @type {string | null} */ #epoch = null;
  /** @type {number | null} */ #seq = null;
  #attempt = 0;
  #connectionId = 0;
  #closed = false;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #retryTimer;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #stableTimer;
  /** @type {ClientStats} */ #stats = { received: 0, duplicates: 0, gaps: 0, resyncs: 0, connections: 0 };
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
    parsed.searchParams.delete("since");
    this.#url = parsed;
    this.#options = options;
    this.#protocols = options.token ? [SUBPROTOCOL, `auth.${options.token}`] : [SUBPROTOCOL];
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    globalThis.addEventListener?.("online", this.#onOnline);
    queueMicrotask(() => this.#connect());
  }

  /** @returns {ConnectionState} the connection state (`connecting` until the first attempt) */
  get state() {
    return this.#state ?? "connecting";
  }

  /** @returns {string | null} the epoch (sidecar run) of the last `connection:status` */
  get epoch() {
    return this.#epoch;
  }

  /** @returns {number | null} the last broadcast seq dispatched (or joined at) */
  get seq() {
    return this.#seq;
  }

  /** @returns {ClientStats} a copy of the counters */
  get stats() {
    return { ...this.#stats };
  }

  /**
   * Listen to an event type (`"stream:created"`), to every server event (`"*"`), or to the
   * client's own `"state"` and `"resync"` events.
   *
   * @param {string} type
   * @param {Function} fn `(payload, envelope)` for an event type; `(envelope)` for `"*"`;
   *   `(change)` for `"state"`; `(info)` for `"resync"`
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
   * Send a client -> server event (e.g. `chat:send`) if the connection is open.
   *
   * @param {string} type
   * @param {Record<string, unknown>} payload
   * @returns {boolean} whether it was handed to the socket (nothing is queued while away)
   */
  send(type, payload) {
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
    const url = new URL(this.#url);
    if (this.#epoch !== null && this.#seq !== null) {
      url.searchParams.set("since", `${this.#epoch}:${this.#seq}`);
    }
    const id = ++this.#connectionId;
    const Impl = this.#options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new Impl(url.href, this.#protocols);
    } catch (err) {
      this.#lost(1006, String(err));
      return;
    }
    this.#ws = ws;
    ws.onmessage = (ev) => {
      if (id === this.#connectionId) this.#onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (id === this.#connectionId) this.#lost(ev.code, ev.reason);
    };
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #lost(code, reason) {
    this.#ws = null;
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
    this.#retryTimer = undefined;
  }

  // -- frames ------------------------------------------------------------------------------

  /** @param {unknown} data */
  #onMessage(data) {
    if (typeof data !== "string") return; // the sidecar sends text frames only
    let envelope;
    try {
      envelope = JSON.parse(data);
    } catch {
      console.warn("SidecarClient: ignoring a frame that is not JSON");
      return;
    }
    if (!envelope || typeof envelope !== "object" || typeof envelope.type !== "string") return;
    if (envelope.type === "connection:status" && envelope.seq === undefined) {
      this.#onStatus(envelope);
      return;
    }
    const seq = envelope.seq;
    if (Number.isInteger(seq) && this.#seq !== null) {
      if (seq <= this.#seq) {
        this.#stats.duplicates += 1;
        return;
      }
      const previousSeq = this.#seq;
      this.#seq = seq;
      if (seq !== previousSeq + 1) {
        this.#stats.gaps += 1;
        this.#resync("gap", this.#epoch, previousSeq);
      }
    } else if (Number.isInteger(seq)) {
      this.#seq = seq;
    }
    this.#dispatch(envelope);
  }

  /** @param {SidecarEvent} envelope */
  #onStatus(envelope) {
    const payload = envelope.payload ?? {};
    const previousEpoch = this.#epoch;
    const previousSeq = this.#seq;
    const first = this.#stats.connections === 0;
    const recovered = payload.recovered === true;
    const tracked = typeof payload.epoch === "string" && Number.isInteger(payload.seq);
    /** @type {ResyncInfo["reason"] | null} */
    let reason = null;
    if (first) {
      if (this.#options.resyncOnFirstConnect) reason = "initial";
    } else if (!recovered) {
      reason = tracked && payload.epoch !== previousEpoch ? "new-epoch" : "not-recovered";
    }
    if (!tracked) {
      // a hub without delivery guarantees: nothing to resume from
      this.#epoch = null;
      this.#seq = null;
    } else if (!recovered || previousEpoch === null) {
      this.#epoch = /** @type {string} */ (payload.epoch);
      this.#seq = /** @type {number} */ (payload.seq);
    } // recovered: keep #seq, the replay that follows continues from it
    this.#stats.connections += 1;
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      this.#attempt = 0;
    }, this.#backoff.stableAfter);
    this.#setState("open", {
      epoch: this.#epoch,
      seq: tracked ? /** @type {number} */ (payload.seq) : null,
      recovered,
      attempt: this.#attempt,
    });
    this.#dispatch(envelope);
    if (reason) this.#resync(reason, previousEpoch, previousSeq);
  }

  /**
   * @param {ResyncInfo["reason"]} reason
   * @param {string | null} previousEpoch
   * @param {number | null} previousSeq
   */
  #resync(reason, previousEpoch, previousSeq) {
    this.#stats.resyncs += 1;
    /** @type {ResyncInfo} */
    const info = { reason, epoch: this.#epoch, seq: this.#seq, previousEpoch, previousSeq };
    this.#call(this.#options.onResync, info);
    this.#emit("resync", info);
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

// Declarations for sidecar-client.js (written by hand, next to it). The payload types and the
// EventMap/ClientEventMap come from sidecar-events.d.ts, which `sidecar schema` generates
// from the event catalog; they are re-exported here, so one import serves:
//
//   import { SidecarClient, type StreamCreatedPayload } from "./sidecar-client.js";
//   const client = new SidecarClient(wsUrl, { token });
//   client.on("stream:created", (p) => console.log(p.streamId)); // p: StreamCreatedPayload
//
// Payloads may carry keys beyond those declared (the schema allows extra keys, so that older
// frontends keep working when a field is added); the declared ones are always valid.

import type { ClientEventMap, EventMap } from "./sidecar-events.js";

export * from "./sidecar-events.js";

// ---------------------------------------------------------------------------------------------
// The envelope
// ---------------------------------------------------------------------------------------------

/** A sidecar event as it arrives on the wire. */
export interface SidecarEvent<K extends string = string, P = Record<string, unknown>> {
  /** `namespace:kebab-case`. */
  type: K;
  payload: P;
  /** RFC 3339 in UTC, e.g. `2026-11-26T08:11:16.5Z`. */
  timestamp: string;
  /** Broadcasts only: contiguous within one epoch (one run of the sidecar). */
  seq?: number;
}

/** Any catalogued server -> client event, discriminated by `type`. */
export type KnownEvent = {
  [K in keyof EventMap]: SidecarEvent<K, EventMap[K]>;
}[keyof EventMap];

/** What a `"*"` listener receives: a catalogued event, or an app-specific one. */
export type AnyEvent = KnownEvent | SidecarEvent<string, Record<string, unknown>>;

// ---------------------------------------------------------------------------------------------
// sidecar-client.js
// ---------------------------------------------------------------------------------------------

/** The subprotocol the sidecar selects; the token rides in a second one, `auth.<token>`. */
export declare const SUBPROTOCOL: "sidecar.v1";

/** Reconnect timing, in milliseconds. */
export interface BackoffOptions {
  /** First ceiling of the random delay (default 500). */
  base?: number;
  /** Largest ceiling (default 20000). */
  cap?: number;
  /** An open connection older than this resets the backoff (default 5000). */
  stableAfter?: number;
}

export declare const DEFAULT_BACKOFF: Readonly<Required<BackoffOptions>>;

/** Full jitter: uniformly random in `[0, min(cap, base * 2 ** attempt))` milliseconds. */
export declare function backoffDelay(
  attempt: number,
  backoff?: BackoffOptions,
  random?: () => number,
): number;

/** False for 1008 and 4500-4999 (the "do not reconnect" class); true for every other code. */
export declare function shouldReconnect(code: number): boolean;

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** What a `"state"` listener (and `onState`) receives. */
export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState | null;
  /** Consecutive failed attempts (reset after a stable connection). */
  attempt: number;
  /** `reconnecting`: milliseconds until the next attempt. */
  delay?: number;
  /** `reconnecting`/`closed`: the close code that ended the connection (1006: it failed). */
  code?: number;
  /** `reconnecting`/`closed`: the close reason. */
  reason?: string;
  /** `open`: the sidecar run. */
  epoch?: string | null;
  /** `open`: the last broadcast seq when the client joined. */
  seq?: number | null;
  /** `open`: whether the hub replayed what was missed. */
  recovered?: boolean;
}

/** What `onResync` and `"resync"` listeners receive: the app must refetch its state. */
export interface ResyncInfo {
  /**
   * `initial`: first connection (only with `resyncOnFirstConnect`); `new-epoch`: the sidecar
   * restarted; `not-recovered`: the replay window no longer reached back; `gap`: a `seq` was
   * skipped on a live connection.
   */
  reason: "initial" | "new-epoch" | "not-recovered" | "gap";
  epoch: string | null;
  seq: number | null;
  previousEpoch: string | null;
  previousSeq: number | null;
}

export interface SidecarClientOptions {
  /** The sidecar token (from its ready line); omit when it runs with `--no-auth`. */
  token?: string | null;
  /** Reconnect timing (tests use small values). */
  backoff?: BackoffOptions;
  /** Called when events may have been missed: refetch the app state. */
  onResync?: (info: ResyncInfo) => void;
  /** Called on every connection state change. */
  onState?: (change: StateChange) => void;
  /** Also call `onResync` (reason `initial`) on the very first connection. Default false. */
  resyncOnFirstConnect?: boolean;
  /** The WebSocket class (default: the global one). */
  WebSocket?: typeof WebSocket;
  /** Jitter source in [0, 1) (default `Math.random`). */
  random?: () => number;
}

/** Counters of one client. */
export interface ClientStats {
  /** Envelopes dispatched. */
  received: number;
  /** Envelopes dropped because their seq was already seen. */
  duplicates: number;
  /** Seq gaps seen on a live connection. */
  gaps: number;
  /** Resync notifications. */
  resyncs: number;
  /** Connections that reached `open`. */
  connections: number;
}

/** A WebSocket client of the sidecar that reconnects, resumes and never goes silently stale. */
export declare class SidecarClient {
  /** Connects on the next microtask; `http(s):` URLs are turned into `ws(s):`. */
  constructor(url: string | URL, options?: SidecarClientOptions);
  readonly state: ConnectionState;
  readonly epoch: string | null;
  readonly seq: number | null;
  readonly stats: ClientStats;
  on<K extends keyof EventMap>(
    type: K,
    fn: (payload: EventMap[K], event: SidecarEvent<K, EventMap[K]>) => void,
  ): () => void;
  on(type: "*", fn: (event: AnyEvent) => void): () => void;
  on(type: "state", fn: (change: StateChange) => void): () => void;
  on(type: "resync", fn: (info: ResyncInfo) => void): () => void;
  /** App-specific (uncatalogued) event types. */
  on(
    type: string,
    fn: (payload: Record<string, unknown>, event: SidecarEvent) => void,
  ): () => void;
  off(type: string, fn: Function): void;
  send<K extends keyof ClientEventMap>(type: K, payload: ClientEventMap[K]): boolean;
  send(type: string, payload: Record<string, unknown>): boolean;
  /** Close for good; no reconnect follows. */
  close(): void;
}

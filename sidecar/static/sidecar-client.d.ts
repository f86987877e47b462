// Declarations for sidecar-client.js (written by hand, next to it). The payload types and the
// EventMap/ClientEventMap come from sidecar-events.d.ts, which `sidecar schema` generates
// from the event catalog; they are re-exported here, so one import serves:
//
//   import { SidecarClient, type StreamCreatedPayload } from "sidecar-hub-client";
//   const client = new SidecarClient(wsUrl, { token, channels: ["project:p1"] });
//   client.on("stream:created", (p, e) => console.log(e.channel, p.streamId)); // p: StreamCreatedPayload
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
  /** Its channel's seq, contiguous within that channel's epoch (none on direct messages). */
  seq?: number;
  /** The named channel it belongs to; absent for the default channel. */
  channel?: string;
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

/** The subprotocol the sidecar selects (the protocol this client speaks). */
export declare const SUBPROTOCOL: "sidecar.v1";

/** This client's version: the server release it ships with (`sidecar-hub`). */
export declare const VERSION: string;

/** The longest request target put in a URL (gunicorn refuses request lines over 4094). */
export declare const MAX_URL_LENGTH: number;

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

/** The pace of channel messages: at most `limit` in any `window` milliseconds. */
export interface RateOptions {
  limit?: number;
  window?: number;
}

export declare const CHANNEL_RATE: Readonly<Required<RateOptions>>;

/** Full jitter: uniformly random in `[0, min(cap, base * 2 ** attempt))` milliseconds. */
export declare function backoffDelay(
  attempt: number,
  backoff?: BackoffOptions,
  random?: () => number,
): number;

/** False for 1008 and 4500-4999 (the "do not reconnect" class); true for every other code. */
export declare function shouldReconnect(code: number): boolean;

/** A namespace `[a-z][a-z0-9_-]{0,31}`, then 0-3 segments `:[A-Za-z0-9._~-]{1,64}`, ≤ 128 bytes. */
export declare function isChannelName(name: unknown): name is string;

/** Where a channel stands. */
export interface Position {
  epoch: string | null;
  seq: number | null;
}

/** The resume points of a wire `since` value (`E:5,project:p1@H:2`); `""` is the default. */
export declare function parseSince(text: string): Map<string, Position>;

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
  /** `open`: the default channel's epoch. */
  epoch?: string | null;
  /** `open`: the default channel's last seq when the client joined. */
  seq?: number | null;
  /** `open`: whether the hub replayed what the default channel missed. */
  recovered?: boolean;
}

/** What `onResync` and `"resync"` listeners receive: the app must reload that channel. */
export interface ResyncInfo {
  /** The named channel; `null` for the default channel. */
  channel: string | null;
  /**
   * `initial`: a first position (only with `resyncOnFirstConnect`); `new-epoch`: the hub
   * restarted or forgot the channel; `not-recovered`: its window no longer reached back;
   * `gap`: a `seq` was skipped on a live connection.
   */
  reason: "initial" | "new-epoch" | "not-recovered" | "gap";
  epoch: string | null;
  seq: number | null;
  previousEpoch: string | null;
  previousSeq: number | null;
}

/** What `onError` and `"error"` listeners receive. */
export interface ErrorInfo {
  /** The channel concerned; `null` for the connection (a failed `getToken`). */
  channel: string | null;
  /**
   * A `channel:error` code (`invalid`, `limit`, `already_subscribed`, `not_subscribed`,
   * `forbidden`, `bad_token`, `token_expired`, `unavailable`), `revoked` (the hub
   * unsubscribed it), `unsupported` (a hub without channels) or `token` (a token hook failed).
   */
  code: string;
  message: string;
  /** Whether the client tries again by itself (`unavailable`, a failed `getToken`). */
  retrying: boolean;
}

/** A subscription token, or a function returning one (called before each subscribe). */
export type TokenSource = string | (() => string | Promise<string>);

/** A channel to join, where to resume it, and its subscription token. */
export interface ChannelSpec {
  channel: string;
  /** `<epoch>:<seq>`: resume from there. */
  since?: string;
  token?: TokenSource;
}

export interface SidecarClientOptions {
  /** The sidecar token (from its ready line); omit when it runs with `--no-auth`. */
  token?: string | null;
  /** Called before every connection attempt (sync or async); wins over `token`. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Named channels to join, besides the default one. */
  channels?: ReadonlyArray<string | ChannelSpec>;
  /** Where to resume, as on the wire: `<epoch>:<seq>` and `<channel>@<epoch>:<seq>` items. */
  since?: string;
  /** Reconnect timing (tests use small values). */
  backoff?: BackoffOptions;
  /** Called when a channel's events may have been missed: reload that channel's state. */
  onResync?: (info: ResyncInfo) => void;
  /** Called on every connection state change. */
  onState?: (change: StateChange) => void;
  /** Called when a channel is refused or dropped by the hub. */
  onError?: (info: ErrorInfo) => void;
  /** Also call `onResync` (reason `initial`) for each channel's first position. */
  resyncOnFirstConnect?: boolean;
  /** The longest request target (default 4000); channels beyond go by message. */
  maxUrlLength?: number;
  /** The pace of channel messages (default 20 per 1250 ms). */
  channelRate?: RateOptions;
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
  /** Events of channels not subscribed (any more), dropped. */
  unwanted: number;
  /** Frames that are not envelopes, ignored. */
  ignored: number;
}

/** The client's own events (names without a `:`). */
export type LocalEventName = "*" | "state" | "resync" | "error";

/** The hub's own namespaces: use `subscribe`/`unsubscribe`, never `send`. */
export type ReservedEventName = `channel:${string}` | `connection:${string}`;

/** A WebSocket client of the sidecar that reconnects, resumes and never goes silently stale. */
export declare class SidecarClient {
  /** Connects on the next microtask; `http(s):` URLs are turned into `ws(s):`. */
  constructor(url: string | URL, options?: SidecarClientOptions);
  readonly state: ConnectionState;
  /** The default channel's epoch. */
  readonly epoch: string | null;
  /** The default channel's last seq. */
  readonly seq: number | null;
  /** The named channels subscribed (or being subscribed), in order. */
  readonly channels: string[];
  /** The last `connection:status` payload. */
  readonly status: EventMap["connection:status"] | null;
  readonly stats: ClientStats;
  /** Where a channel stands (`null`/omitted: the default channel). */
  position(channel?: string | null): Position | null;
  on<K extends keyof EventMap>(
    type: K,
    fn: (payload: EventMap[K], event: SidecarEvent<K, EventMap[K]>) => void,
  ): () => void;
  on(type: "*", fn: (event: AnyEvent) => void): () => void;
  on(type: "state", fn: (change: StateChange) => void): () => void;
  on(type: "resync", fn: (info: ResyncInfo) => void): () => void;
  on(type: "error", fn: (info: ErrorInfo) => void): () => void;
  /** App-specific (uncatalogued) event types; never a catalogued or a local name. */
  on<T extends string>(
    type: T extends keyof EventMap | LocalEventName ? never : T,
    fn: (payload: Record<string, unknown>, event: SidecarEvent<T>) => void,
  ): () => void;
  off(type: string, fn: Function): void;
  /** Join a named channel (resuming from `since`); false if already subscribed. */
  subscribe(channel: string, options?: { since?: string; token?: TokenSource }): boolean;
  /** Leave a named channel; nothing of it is dispatched afterwards. */
  unsubscribe(channel: string): boolean;
  send<K extends keyof ClientEventMap>(type: K, payload: ClientEventMap[K]): boolean;
  /** App-specific client -> server types; never a catalogued one (its payload is checked). */
  send<T extends string>(
    type: T extends keyof ClientEventMap | keyof EventMap | ReservedEventName ? never : T,
    payload: Record<string, unknown>,
  ): boolean;
  /** Close for good; no reconnect follows. */
  close(): void;
}

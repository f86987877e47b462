/**
 * Unit tests of sidecar-client.js against a fake WebSocket, run inside Chromium by
 * tests/browser/test_client_unit.py (the real-socket behaviour is tested there too).
 *
 * `runAll(mod)` takes the imported module and resolves to `[{name, ok, error}]`; it also runs
 * the shared vectors (`tests/data/client-vectors.json`, served as `/client-vectors.json`).
 */

import { FakeSocket, eq, until } from "./fake-socket.mjs";
import { vectorTests } from "./client-vectors.mjs";

/** A client on a fresh fake, with everything it reports recorded. */
function harness(mod, url = "ws://127.0.0.1:1/ws", options = {}) {
  FakeSocket.all = [];
  const rec = { events: [], states: [], resyncs: [], payloads: [] };
  const client = new mod.SidecarClient(url, {
    token: "tok",
    WebSocket: FakeSocket,
    backoff: { base: 4, cap: 16, stableAfter: 60 },
    onResync: (info) => rec.resyncs.push(info),
    ...options,
  });
  client.on("*", (event) => rec.events.push(event));
  client.on("state", (change) => rec.states.push(change));
  client.on("stream:updated", (payload) => rec.payloads.push(payload.i));
  const socket = async (n) => {
    await until(() => FakeSocket.all.length >= n, `connection attempt ${n}`);
    return FakeSocket.all[n - 1];
  };
  return { client, rec, socket };
}

const tests = {
  async "offers the subprotocol pair and turns http into ws"(mod) {
    const { client, socket } = harness(mod, "http://127.0.0.1:9/ws?since=old:1");
    const ws = await socket(1);
    eq(ws.protocols, ["sidecar.v1", "auth.tok"], "protocols");
    eq(ws.url, "ws://127.0.0.1:9/ws", "url (a since in the given URL is ignored)");
    client.close();
    const bare = new mod.SidecarClient("ws://127.0.0.1:9/ws", { WebSocket: FakeSocket });
    await until(() => FakeSocket.all.length === 2, "second client");
    eq(FakeSocket.all[1].protocols, ["sidecar.v1"], "protocols without a token");
    bare.close();
  },

  async "dispatches by type and to * and reports states"(mod) {
    const { client, rec, socket } = harness(mod);
    const ws = await socket(1);
    ws.status("E", 3);
    ws.event(4);
    ws.event(5, "app:thing");
    eq(rec.payloads, [4], "stream:updated listener");
    eq(rec.events.map((e) => e.type), ["connection:status", "stream:updated", "app:thing"], "*");
    eq(rec.states.map((s) => s.state), ["connecting", "open"], "states");
    eq(rec.resyncs, [], "no resync on the first connection by default");
    eq([client.epoch, client.seq], ["E", 5], "position");
    client.close();
  },

  async "resyncOnFirstConnect reports the first connection"(mod) {
    const { client, rec, socket } = harness(mod, undefined, { resyncOnFirstConnect: true });
    (await socket(1)).status("E", 7);
    eq(rec.resyncs.map((r) => [r.reason, r.epoch, r.seq]), [["initial", "E", 7]], "resync");
    client.close();
  },

  async "drops duplicates by seq and resyncs on a gap"(mod) {
    const { client, rec, socket } = harness(mod);
    const ws = await socket(1);
    ws.status("E", 0);
    for (const seq of [1, 2, 2, 1, 3, 6, 5, 7]) ws.event(seq);
    eq(rec.payloads, [1, 2, 3, 6, 7], "dispatched");
    eq(client.stats.duplicates, 3, "duplicates");
    eq(rec.resyncs.map((r) => [r.reason, r.previousSeq, r.seq]), [["gap", 3, 6]], "resyncs");
    client.close();
  },

  async "resumes with since and accepts the replay"(mod) {
    const { client, rec, socket } = harness(mod);
    const first = await socket(1);
    first.status("E", 10);
    first.event(11);
    first.drop(4008, "slow consumer");
    const second = await socket(2);
    eq(new URL(second.url).searchParams.get("since"), "E:11", "since");
    second.status("E", 14, true);
    for (const seq of [11, 12, 13, 14, 15]) second.event(seq);
    eq(rec.payloads, [11, 12, 13, 14, 15], "events exactly once");
    eq(rec.resyncs, [], "no resync when recovered");
    eq(
      rec.states.map((s) => [s.state, s.code ?? null, s.recovered ?? null]),
      [
        ["connecting", null, null],
        ["open", null, false],
        ["reconnecting", 4008, null],
        ["open", null, true],
      ],
      "states",
    );
    client.close();
  },

  async "recovered false: new-epoch or not-recovered, then continues"(mod) {
    const { client, rec, socket } = harness(mod);
    const a = await socket(1);
    a.status("E1", 5);
    a.drop(1001, "server shutting down");
    const b = await socket(2);
    b.status("E1", 900, false);
    b.event(901);
    b.drop(1006);
    const c = await socket(3);
    eq(new URL(c.url).searchParams.get("since"), "E1:901", "since after a resync");
    c.status("E2", 0, false);
    c.event(1);
    eq(
      rec.resyncs.map((r) => [r.reason, r.previousEpoch, r.previousSeq, r.epoch, r.seq]),
      [
        ["not-recovered", "E1", 5, "E1", 900],
        ["new-epoch", "E1", 901, "E2", 0],
      ],
      "resyncs",
    );
    eq(rec.payloads, [901, 1], "events");
    client.close();
  },

  async "terminal close codes stop for good, others reconnect"(mod) {
    for (const code of [4500, 4999, 1008]) {
      const { client, rec, socket } = harness(mod);
      (await socket(1)).status("E", 0);
      FakeSocket.all[0].drop(code, "go away");
      eq(client.state, "closed", `state after ${code}`);
      eq(rec.states.at(-1).code, code, `closed code ${code}`);
      await new Promise((resolve) => setTimeout(resolve, 40));
      eq(FakeSocket.all.length, 1, `no new attempt after ${code}`);
    }
    for (const code of [1001, 1003, 1006, 1009, 1011, 4000, 4008, 4499]) {
      const { client, socket } = harness(mod);
      (await socket(1)).status("E", 0);
      FakeSocket.all[0].drop(code);
      eq(client.state, "reconnecting", `state after ${code}`);
      await socket(2);
      client.close();
    }
  },

  async "backoff grows with full jitter, is capped, and resets once stable"(mod) {
    const delays = [0, 1, 2, 3, 4, 5, 6, 7, 30, 1000].map((n) =>
      mod.backoffDelay(n, {}, () => 0.999999),
    );
    eq(delays, [499, 999, 1999, 3999, 7999, 15999, 19999, 19999, 19999, 19999], "ceilings");
    eq(mod.backoffDelay(3, { base: 500, cap: 20000 }, () => 0), 0, "full jitter starts at 0");
    const { client, rec, socket } = harness(mod, undefined, { random: () => 0.999 });
    for (let n = 1; n <= 4; n += 1) (await socket(n)).drop(1006);
    const first = await socket(5);
    eq(
      rec.states.filter((s) => s.state === "reconnecting").map((s) => [s.attempt, s.delay]),
      [
        [1, 3],
        [2, 7],
        [3, 15],
        [4, 15],
      ],
      "attempts and delays (base 4, cap 16)",
    );
    first.status("E", 0);
    await new Promise((resolve) => setTimeout(resolve, 90)); // > stableAfter (60 ms)
    first.drop(1006);
    eq(rec.states.at(-1).attempt, 1, "attempt counter reset after a stable connection");
    eq(rec.states.at(-1).delay, 3, "first delay again");
    client.close();
  },

  async "an unstable connection does not reset the backoff"(mod) {
    const { client, rec, socket } = harness(mod, undefined, { random: () => 0.999 });
    (await socket(1)).drop(1006);
    const second = await socket(2);
    second.status("E", 0);
    second.drop(1006); // open for far less than stableAfter
    eq(rec.states.at(-1).attempt, 2, "attempt keeps counting");
    client.close();
  },

  async "the online event makes an immediate attempt"(mod) {
    const { client, socket } = harness(mod, undefined, {
      backoff: { base: 60000, cap: 60000 },
      random: () => 0.99,
    });
    (await socket(1)).drop(1006);
    eq(FakeSocket.all.length, 1, "waiting for about a minute");
    window.dispatchEvent(new Event("online"));
    await socket(2);
    client.close();
  },

  async "close() is final, idempotent and cancels a pending retry"(mod) {
    const { client, rec, socket } = harness(mod);
    const ws = await socket(1);
    ws.status("E", 0);
    client.close();
    client.close();
    eq(ws.closedWith, { code: 1000, reason: "client closed" }, "socket closed with 1000");
    ws.drop(1000); // the browser's close event after close(): ignored
    eq(rec.states.map((s) => s.state), ["connecting", "open", "closed"], "states");
    const other = harness(mod, undefined, { backoff: { base: 30, cap: 30 }, random: () => 0.99 });
    (await other.socket(1)).drop(1006);
    other.client.close();
    await new Promise((resolve) => setTimeout(resolve, 60));
    eq(FakeSocket.all.length, 1, "no attempt after close()");
    eq(other.client.state, "closed", "state");
  },

  async "listeners: off, unsubscribe, and a throwing listener does not stop delivery"(mod) {
    const { client, socket } = harness(mod);
    const seen = [];
    const a = (p) => seen.push(["a", p.i]);
    const unsubscribe = client.on("stream:updated", (p) => seen.push(["b", p.i]));
    client.on("stream:updated", a);
    client.on("stream:updated", () => {
      throw new Error("listener bug (expected by the test)");
    });
    client.on("stream:updated", (p) => seen.push(["c", p.i]));
    const reported = [];
    const onError = (event) => {
      reported.push(String(event.error?.message));
      event.preventDefault();
    };
    window.addEventListener("error", onError);
    const ws = await socket(1);
    ws.status("E", 0);
    ws.event(1);
    client.off("stream:updated", a);
    unsubscribe();
    ws.event(2);
    window.removeEventListener("error", onError);
    eq(seen, [["b", 1], ["a", 1], ["c", 1], ["c", 2]], "deliveries");
    eq(reported, ["listener bug (expected by the test)", "listener bug (expected by the test)"], "reported");
    client.close();
  },

  async "send() only while open"(mod) {
    const { client, socket } = harness(mod);
    const ws = await socket(1);
    eq(client.send("chat:cancel", { conversationId: "c" }), false, "before open");
    ws.status("E", 0);
    eq(client.send("chat:cancel", { conversationId: "c" }), true, "open");
    const sent = JSON.parse(ws.sent[0]);
    eq([sent.type, sent.payload], ["chat:cancel", { conversationId: "c" }], "envelope");
    client.close();
    eq(client.send("chat:cancel", { conversationId: "c" }), false, "after close");
  },

  async "channel messages are paced under the rate limit"(mod) {
    const names = ["a:1", "a:2", "a:3", "a:4", "a:5"];
    const { client, socket } = harness(mod, undefined, {
      channels: names,
      maxUrlLength: 10, // nothing fits: every channel by message
      channelRate: { limit: 2, window: 60 },
    });
    const ws = await socket(1);
    eq(new URL(ws.url).search, "", "no channels in the URL");
    const started = performance.now();
    ws.status("E", 0);
    eq(ws.sent.length, 2, "two at once");
    await until(() => ws.sent.length === 5, "all five");
    const elapsed = performance.now() - started;
    if (elapsed < 100) throw new Error(`five messages in ${elapsed} ms: not paced`);
    eq(ws.sent.map((m) => JSON.parse(m).payload.channel), names, "in order");
    client.close();
  },

  async "subscription tokens: a value, a function, an async function, a failing hook"(mod) {
    const errors = [];
    const { client, socket } = harness(mod, undefined, { onError: (e) => errors.push(e) });
    const ws = await socket(1);
    ws.status("E", 0);
    client.subscribe("user:1", { token: "t1" });
    client.subscribe("user:2", { token: () => "t2" });
    client.subscribe("user:3", {
      token: () => {
        throw new Error("no token");
      },
    });
    client.subscribe("user:4", { token: async () => "t4" });
    await until(() => ws.sent.length === 3, "three subscribes");
    eq(
      ws.sent.map((m) => JSON.parse(m).payload),
      [
        { channel: "user:1", token: "t1" },
        { channel: "user:2", token: "t2" },
        { channel: "user:4", token: "t4" },
      ],
      "payloads",
    );
    eq(errors.map((e) => [e.channel, e.code, e.retrying]), [["user:3", "token", false]], "errors");
    eq(client.channels, ["user:1", "user:2", "user:4"], "channels");
    client.close();
  },

  async "getToken runs before every attempt; a failure is an error and a retry"(mod) {
    let calls = 0;
    const errors = [];
    const { client, rec, socket } = harness(mod, undefined, {
      token: undefined,
      getToken: async () => {
        calls += 1;
        if (calls === 2) throw new Error("expired");
        return `tok${calls}`;
      },
      onError: (e) => errors.push(e),
    });
    const first = await socket(1);
    eq(first.protocols, ["sidecar.v1", "auth.tok1"], "first token");
    first.status("E", 0);
    first.drop(4401, "identity expired");
    const second = await socket(2); // the second call failed: one more backoff, a third call
    eq(second.protocols, ["sidecar.v1", "auth.tok3"], "a fresh token");
    eq(calls, 3, "calls");
    eq(errors.map((e) => [e.channel, e.code, e.retrying]), [[null, "token", true]], "errors");
    eq(rec.states.filter((s) => s.state === "reconnecting").map((s) => s.code), [4401, 1006], "states");
    client.close();
  },

  async "ignores frames that are not envelopes; tolerates a hub without seq"(mod) {
    const { client, rec, socket } = harness(mod);
    const ws = await socket(1);
    const warn = console.warn;
    console.warn = () => {};
    try {
      ws.open();
      ws.deliver({ type: "connection:status", payload: { status: "connected" } });
      ws.deliver("not json");
      ws.deliver({ no: "type" });
      ws.deliver({ type: "stream:updated", payload: { i: 1 } });
    } finally {
      console.warn = warn;
    }
    eq(rec.payloads, [1], "event without seq delivered");
    ws.drop(1006);
    const again = await socket(2);
    eq(new URL(again.url).searchParams.has("since"), false, "nothing to resume from");
    again.open();
    again.deliver({ type: "connection:status", payload: { status: "connected" } });
    eq(rec.resyncs.map((r) => r.reason), ["not-recovered"], "every reconnect is a resync");
    client.close();
  },
};

/**
 * Run every test in order.
 * @param {object} mod the imported sidecar-client.js
 * @returns {Promise<{name: string, ok: boolean, error: string | null}[]>}
 */
export async function runAll(mod) {
  const results = [];
  const vectors = await (await fetch("/client-vectors.json", { cache: "no-store" })).json();
  for (const [name, test] of [...Object.entries(tests), ...Object.entries(vectorTests(vectors))]) {
    try {
      await test(mod);
      results.push({ name, ok: true, error: null });
    } catch (err) {
      results.push({ name, ok: false, error: String(err?.stack ?? err) });
    }
  }
  return results;
}

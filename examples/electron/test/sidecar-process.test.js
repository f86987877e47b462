"use strict";
/**
 * Plain Node playing Electron's main process (Electron itself is not needed): spawn the
 * sidecar through sidecar-process.js, read the ready line, connect as the renderer would
 * (subprotocols `sidecar.v1` + `auth.<token>`), publish over HTTP, receive the event, quit,
 * and check that the sidecar is gone.
 *
 *   node --test test/sidecar-process.test.js                     # scripts/serve
 *   SIDECAR_BINARY=/path/to/sidecar-<triple> node --test test/   # the built binary
 *
 * Every wait has a deadline.
 */

const assert = require("node:assert/strict");
const { test } = require("node:test");
const WebSocket = require("ws");

const { SidecarStartError, defaultCommand, startSidecar } = require("../sidecar-process");

const EVENT = { type: "stream:created", payload: { projectId: "p", streamId: "s", name: "n" } };
const TIMEOUT = { timeout: 60000 };
const quiet = () => {};

/** `promise`, or a rejection after `ms` naming `what`. */
function within(ms, what, promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** The socket's text frames as parsed JSON, one `next()` at a time. */
function frames(ws) {
  const queued = [];
  const waiting = [];
  ws.on("message", (data) => {
    const frame = JSON.parse(data.toString());
    const next = waiting.shift();
    if (next) next(frame);
    else queued.push(frame);
  });
  return {
    next: (ms = 5000) =>
      within(
        ms,
        "a frame",
        queued.length ? Promise.resolve(queued.shift()) : new Promise((r) => waiting.push(r)),
      ),
  };
}

/** Whether a process exists (signal 0 asks without signalling; POSIX only). */
function running(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === "EPERM";
  }
}

test("spawn, ready line, connect, receive a published event, quit: the sidecar is gone", TIMEOUT, async (t) => {
  const sidecar = await startSidecar({ ...defaultCommand(), onLog: quiet });
  t.after(() => sidecar.stop({ timeoutMs: 2000 }));
  const { ready } = sidecar;
  assert.equal(ready.event, "ready");
  assert.match(ready.ws, /^ws:\/\/127\.0\.0\.1:\d+\/ws$/);
  assert.ok(ready.token.length >= 32, "a generated token is in the ready line");

  const ws = new WebSocket(ready.ws, ["sidecar.v1", `auth.${ready.token}`]);
  const closed = new Promise((resolve) => ws.once("close", (code) => resolve(code)));
  const incoming = frames(ws);
  const status = await incoming.next();
  assert.equal(status.type, "connection:status");
  assert.equal(ws.protocol, "sidecar.v1");

  const response = await fetch(`${ready.url}/api/v1/events`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ready.token}`, "Content-Type": "application/json" },
    body: JSON.stringify(EVENT),
    signal: AbortSignal.timeout(5000),
  });
  assert.equal(response.status, 202);
  const event = await incoming.next();
  assert.equal(event.type, EVENT.type);
  assert.deepEqual(event.payload, EVENT.payload);

  const exit = await within(10000, "the sidecar's exit", sidecar.stop({ timeoutMs: 5000 }));
  assert.deepEqual(exit, { code: 0, signal: null }, "a graceful exit, not a kill");
  assert.equal(await within(5000, "the close frame", closed), 1001);
  if (process.platform !== "win32") {
    assert.equal(running(sidecar.child.pid), false);
    assert.equal(running(ready.pid), false, "the process that printed the ready line is gone too");
  }
});

test("the renderer's client, the npm package, receives events and outlives its sidecar", TIMEOUT, async (t) => {
  // what renderer.js runs, in Node: sidecar-hub-client (resolved through its exports map)
  // with ws as the WebSocket class, on a named channel and the default one
  const { SidecarClient, SUBPROTOCOL } = await import("sidecar-hub-client");
  assert.equal(SUBPROTOCOL, "sidecar.v1");
  const sidecar = await startSidecar({ ...defaultCommand(), onLog: quiet });
  t.after(() => sidecar.stop({ timeoutMs: 2000 }));
  const { ready } = sidecar;
  const seen = [];
  const opened = [];
  const client = new SidecarClient(ready.ws, {
    getToken: async () => ready.token,
    channels: ["project:p1"],
    WebSocket,
    backoff: { base: 20, cap: 100 },
  });
  t.after(() => client.close());
  client.on("stream:created", (payload, event) => seen.push([event.channel ?? null, event.seq, payload.name]));
  const lost = [];
  client.on("state", ({ state, code }) => (state === "open" ? opened : lost).push(code));
  await within(10000, "the client to open", until(() => opened.length === 1));
  const publish = async (name, channel) => {
    const body = { ...EVENT, payload: { ...EVENT.payload, name }, ...(channel ? { channel } : {}) };
    const response = await fetch(`${ready.url}/api/v1/events`, {
      method: "POST",
      headers: { Authorization: `Bearer ${ready.token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    assert.equal(response.status, 202);
  };
  await publish("one", "project:p1");
  await publish("two");
  await within(10000, "two events", until(() => seen.length === 2));
  assert.deepEqual(seen, [["project:p1", 1, "one"], [null, 1, "two"]]);
  assert.deepEqual(client.channels, ["project:p1"]);
  // the sidecar goes away: 1001, then attempts that fail (ws reports each as an error event,
  // which the client must absorb), and the client keeps trying until it is closed
  await sidecar.stop({ timeoutMs: 5000 });
  await within(10000, "a failed attempt", until(() => lost.includes(1006)));
  assert.equal(lost[1], 1001);
  client.close();
  assert.equal(client.state, "closed");
});

/** Resolves once `predicate()` is true (checked every 10 ms). */
function until(predicate) {
  return new Promise((resolve) => {
    const check = () => (predicate() ? resolve() : setTimeout(check, 10));
    check();
  });
}

test("a start-up failure rejects with the reason instead of hanging", TIMEOUT, async (t) => {
  const first = await startSidecar({ ...defaultCommand(), onLog: quiet });
  t.after(() => first.stop({ timeoutMs: 2000 }));
  const second = startSidecar({ ...defaultCommand(), port: first.ready.port, onLog: quiet });
  await assert.rejects(within(30000, "the second sidecar", second), (err) => {
    assert.ok(err instanceof SidecarStartError, err);
    // the error line (issue 12) says port-in-use; a sidecar without it just exits
    assert.ok(["port-in-use", "exited"].includes(err.error), err.error);
    assert.ok(err.message.length > 0);
    return true;
  });
});

test("a missing executable is a spawn failure", TIMEOUT, async () => {
  await assert.rejects(startSidecar({ command: "/nonexistent/sidecar", onLog: quiet }), {
    name: "SidecarStartError",
    error: "spawn-failed",
  });
});

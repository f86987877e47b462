/**
 * The shared client vectors (tests/data/client-vectors.json) against sidecar-client.js, with a
 * fake WebSocket. Run in Chromium (tests/browser/test_client_unit.py, through client-unit.mjs)
 * and in Node (node-vectors.mjs, from tests/test_client_vectors.py); the Python client runs
 * the same file (tests/test_client_vectors.py).
 */

import { FakeSocket, eq, until } from "./fake-socket.mjs";

const TIMESTAMP = "2026-01-01T00:00:00Z";
const CONTROL = new Set(["connection", "channel"]);

/** @param {string} url */
function targetOf(url) {
  return url.slice(url.indexOf("/", "ws://".length));
}

/**
 * Run one scenario; throws on the first difference.
 * @param {any} mod the imported sidecar-client.js
 * @param {any} scenario
 */
export async function runScenario(mod, scenario) {
  FakeSocket.all = [];
  /** @type {unknown[][]} */
  const log = [];
  const options = scenario.options;
  const client = new mod.SidecarClient(`ws://127.0.0.1:9${options.path ?? "/ws"}`, {
    channels: options.channels,
    since: options.since,
    resyncOnFirstConnect: options.resyncOnFirstConnect,
    maxUrlLength: options.maxUrlLength,
    WebSocket: FakeSocket,
    backoff: { base: 1, cap: 1, stableAfter: 60000 },
    random: () => 0,
    onResync: (r) => log.push(["resync", r.channel, r.reason, r.epoch, r.seq, r.previousEpoch, r.previousSeq]),
    onError: (e) => log.push(["error", e.channel, e.code, e.retrying]),
  });
  client.on("*", (e) => {
    if (!CONTROL.has(e.type.split(":")[0])) log.push(["event", e.channel ?? null, e.seq ?? null]);
  });
  let ws = null;
  let connections = 0;
  let read = 0;
  try {
    for (const [index, step] of scenario.steps.entries()) {
      const where = `step ${index} ${JSON.stringify(step)}`;
      if ("connect" in step) {
        connections += 1;
        await until(() => FakeSocket.all.length >= connections, `connection ${connections}`);
        ws = FakeSocket.all[connections - 1];
        read = 0;
        eq(targetOf(ws.url), step.connect, where);
      } else if ("receive" in step || "receiveText" in step) {
        if (ws.readyState === 0) ws.open();
        const frame = { type: "test:tick", payload: {}, timestamp: TIMESTAMP, ...step.receive };
        ws.deliver("receiveText" in step ? step.receiveText : JSON.stringify(frame));
      } else if ("send" in step) {
        await until(() => ws.sent.length > read, `a message (${where})`);
        const sent = JSON.parse(ws.sent[read++]);
        eq({ type: sent.type, payload: sent.payload }, step.send, where);
      } else if ("close" in step) {
        ws.drop(step.close, step.reason ?? "");
      } else if ("subscribe" in step) {
        client.subscribe(step.subscribe, { since: step.since, token: step.token });
      } else if ("unsubscribe" in step) {
        client.unsubscribe(step.unsubscribe);
      } else if ("state" in step) {
        eq(client.state, step.state, where);
        await new Promise((resolve) => setTimeout(resolve, 20));
        eq(FakeSocket.all.length, connections, `no attempt after the client closed (${where})`);
      }
    }
    eq(log, scenario.expect, "delivered");
  } finally {
    client.close();
  }
}

/**
 * Every vector as a named test: `{name: (mod) => Promise}`.
 * @param {any} vectors the parsed JSON file
 */
export function vectorTests(vectors) {
  /** @type {Record<string, (mod: any) => Promise<void>>} */
  const tests = {
    async "vectors: close codes"(mod) {
      eq(vectors.closeCodes.map(([code]) => [code, mod.shouldReconnect(code)]), vectors.closeCodes, "closeCodes");
    },
    async "vectors: backoff ceilings"(mod) {
      const { base, cap, ceilings } = vectors.backoff;
      for (const [attempt, ceiling] of ceilings) {
        eq(mod.backoffDelay(attempt, { base, cap }, () => 1 - 1e-12), ceiling - 1, `attempt ${attempt}`);
        eq(mod.backoffDelay(attempt, { base, cap }, () => 0), 0, `attempt ${attempt} at 0`);
      }
    },
  };
  for (const scenario of vectors.scenarios) {
    tests[`vector: ${scenario.name}`] = (mod) => runScenario(mod, scenario);
  }
  return tests;
}

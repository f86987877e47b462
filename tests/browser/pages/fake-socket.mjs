/**
 * A scripted stand-in for the browser's WebSocket, shared by the unit tests and the vector
 * runner of sidecar-client.js (in Chromium and in Node).
 */

/** A scripted stand-in for the browser's WebSocket. */
export class FakeSocket {
  /** @type {FakeSocket[]} */
  static all = [];

  /**
   * @param {string} url
   * @param {string[]} protocols
   */
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    /** @type {string[]} */
    this.sent = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
  }

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** @param {unknown} message */
  deliver(message) {
    this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) });
  }

  /**
   * @param {string} epoch
   * @param {number} seq
   * @param {boolean} recovered
   */
  status(epoch, seq, recovered = false) {
    this.open();
    this.deliver({
      type: "connection:status",
      payload: { status: "connected", epoch, seq, recovered },
      timestamp: "2026-01-01T00:00:00Z",
    });
  }

  /** @param {number} seq */
  event(seq, type = "stream:updated") {
    this.deliver({ type, payload: { i: seq }, timestamp: "2026-01-01T00:00:00Z", seq });
  }

  /** The server (or the network) ends the connection. */
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  /** @param {string} data */
  send(data) {
    this.sent.push(data);
  }

  close(code = 1005, reason = "") {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
}

/**
 * Wait until `predicate()` is truthy (polling every 2 ms), or fail naming `what`.
 * @param {() => unknown} predicate
 * @param {string} what
 */
export async function until(predicate, what, timeout = 2000) {
  const deadline = performance.now() + timeout;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/**
 * @param {unknown} actual
 * @param {unknown} expected
 * @param {string} what
 */
export function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

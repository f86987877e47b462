/**
 * The sidecar's debug page (`GET /?token=...`), built on sidecar-client.js: the live event
 * stream, this page's connection state, and the hub counters from `GET /api/v1/hub`.
 *
 * The token is read from the address bar once, then removed from it (and from the history
 * entry) with `history.replaceState`; it stays in memory only. Everything from the wire is
 * rendered with `textContent`, never as HTML. The page joins the channels named in
 * `?channels=a,b` and those typed into its "join" box; each event shows its channel, and the
 * table filters by type and by channel.
 *
 * @module debug
 */

import { SidecarClient, isChannelName } from "/client/sidecar-client.js";

const MAX_ROWS = 200;
const MAX_PAYLOAD_CHARS = 2000;
const COUNTERS_EVERY_MS = 2000;
const COUNTERS_MISSING_EVERY_MS = 10000;

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** Take the token from the URL and remove it from the address bar. */
function takeToken() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (url.searchParams.has("token")) {
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  return token;
}

const token = takeToken();
const initialChannels = (new URL(location.href).searchParams.get("channels") ?? "")
  .split(",")
  .filter((name) => isChannelName(name));
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

/** @param {string} text */
function note(text) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, " ", text);
  $("notes").prepend(item);
  while ($("notes").childElementCount > 30) $("notes").lastElementChild?.remove();
}

// -- events -------------------------------------------------------------------------------

let shown = 0;

/** @param {HTMLTableRowElement} row */
function applyFilter(row) {
  const filter = /** @type {HTMLInputElement} */ ($("filter")).value.trim();
  const channel = /** @type {HTMLSelectElement} */ ($("channel-filter")).value;
  row.hidden =
    (filter !== "" && !(row.dataset.type ?? "").includes(filter)) ||
    (channel !== "*" && (row.dataset.channel ?? "") !== channel);
}

/** Offer `name` in the channel filter (once). @param {string} name */
function offerChannel(name) {
  const select = /** @type {HTMLSelectElement} */ ($("channel-filter"));
  if ([...select.options].some((option) => option.value === name)) return;
  const option = document.createElement("option");
  option.value = name;
  option.textContent = name;
  select.append(option);
}

function updateCount() {
  const rows = [...$("events").children];
  const visible = rows.filter((row) => !(/** @type {HTMLElement} */ (row).hidden)).length;
  $("count").textContent = `${visible} shown` + (visible !== rows.length ? ` of ${rows.length}` : "");
  $("empty").hidden = rows.length > 0;
}

/** @param {import("./sidecar-client.js").SidecarEvent} event */
function addRow(event) {
  if (/** @type {HTMLInputElement} */ ($("pause")).checked) return;
  const row = document.createElement("tr");
  row.dataset.type = event.type;
  row.dataset.channel = event.channel ?? "";
  if (event.channel) offerChannel(event.channel);
  if (event.seq !== undefined) row.dataset.seq = String(event.seq);
  const namespace = event.type.split(":")[0];
  row.className = `ns-${namespace.replace(/[^a-z0-9-]/g, "")}`;
  const cells = [
    (event.timestamp ?? "").replace(/^.*T/, "").replace("Z", ""),
    event.channel ?? "–",
    event.seq === undefined ? "–" : String(event.seq),
    event.type,
  ];
  for (const [index, text] of cells.entries()) {
    const cell = document.createElement("td");
    cell.className = ["time", "channel", "seq", "type"][index];
    cell.title = text;
    cell.textContent = text;
    row.append(cell);
  }
  const payload = document.createElement("td");
  const pre = document.createElement("pre");
  let json = JSON.stringify(event.payload, null, 1).replace(/\n\s*/g, " ");
  if (json.length > MAX_PAYLOAD_CHARS) json = `${json.slice(0, MAX_PAYLOAD_CHARS)}… (truncated)`;
  pre.textContent = json;
  payload.append(pre);
  row.append(payload);
  applyFilter(row);
  $("events").prepend(row);
  shown += 1;
  while ($("events").childElementCount > MAX_ROWS) $("events").lastElementChild?.remove();
  updateCount();
}

function refilter() {
  for (const row of $("events").children) applyFilter(/** @type {HTMLTableRowElement} */ (row));
  updateCount();
}
$("filter").addEventListener("input", refilter);
$("channel-filter").addEventListener("change", refilter);
$("clear").addEventListener("click", () => {
  $("events").replaceChildren();
  updateCount();
});
$("ping").addEventListener("click", async () => {
  try {
    const response = await fetch("/api/v1/events", {
      method: "POST",
      headers: { ...authHeaders, "Content-Type": "application/json" },
      body: JSON.stringify({
        type: "debug:ping",
        payload: { from: "debug page", at: new Date().toISOString() },
      }),
    });
    if (!response.ok) note(`publish: POST /api/v1/events answered ${response.status}`);
  } catch (err) {
    note(`publish failed: ${err}`);
  }
});

// -- the client ---------------------------------------------------------------------------

const client = new SidecarClient(wsUrl, {
  token,
  channels: initialChannels,
  onResync: (info) => {
    $("resyncs").textContent = String(client.stats.resyncs);
    const where = info.channel ?? "the default channel";
    note(`resync (${info.reason}) on ${where}: events may have been missed; an app would refetch now`);
  },
  onError: (info) => {
    note(`channel ${info.channel}: ${info.code} ${info.message}${info.retrying ? " (retrying)" : ""}`);
    showChannels();
  },
});

/** The joined channels, each with a "leave" button. */
function showChannels() {
  const items = client.channels.map((name) => {
    const item = document.createElement("li");
    const label = document.createElement("span");
    const leave = document.createElement("button");
    label.textContent = name;
    leave.type = "button";
    leave.textContent = "leave";
    leave.title = `unsubscribe from ${name}`;
    leave.addEventListener("click", () => {
      client.unsubscribe(name);
      note(`left ${name}`);
      showChannels();
    });
    item.append(label, leave);
    offerChannel(name);
    return item;
  });
  if (items.length === 0) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = "the default channel only";
    items.push(item);
  }
  $("channels").replaceChildren(...items);
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("join-name"));
  const name = input.value.trim();
  if (!isChannelName(name)) {
    note(`not a channel name: ${name} (namespace[:segment]…, e.g. project:p1)`);
    return;
  }
  if (client.subscribe(name)) note(`joining ${name}`);
  input.value = "";
  showChannels();
});
showChannels();

client.on("state", (change) => {
  const pill = $("state");
  pill.textContent = change.state;
  pill.dataset.state = change.state;
  document.body.dataset.state = change.state;
  if (change.state === "open") {
    $("epoch").textContent = change.epoch ?? "–";
    note(`open: epoch ${change.epoch}, seq ${change.seq}, recovered ${change.recovered}`);
  } else if (change.state === "reconnecting") {
    pill.textContent = `reconnecting (attempt ${change.attempt})`;
    note(`connection lost (close ${change.code}); retry in ${change.delay} ms`);
  } else if (change.state === "closed") {
    note(`closed (close ${change.code}${change.reason ? ` ${change.reason}` : ""})`);
  }
});

client.on("*", (event) => {
  addRow(event);
  $("seq").textContent = client.seq === null ? "–" : String(client.seq);
  const stats = client.stats;
  $("stat-received").textContent = String(stats.received);
  $("stat-duplicates").textContent = String(stats.duplicates);
});

// -- hub counters -------------------------------------------------------------------------

/**
 * Flatten nested counters into `a.b` keys.
 * @param {unknown} value
 * @param {string} prefix
 * @param {[string, string][]} out
 * @returns {[string, string][]}
 */
function flatten(value, prefix = "", out = []) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) {
      flatten(inner, prefix ? `${prefix}.${key}` : key, out);
    }
  } else {
    out.push([prefix, typeof value === "string" ? value : JSON.stringify(value)]);
  }
  return out;
}

/**
 * The first numeric counter named `name` at the top level or one level down.
 * @param {Record<string, unknown>} counters
 * @param {string} name
 */
function counter(counters, name) {
  if (typeof counters[name] === "number") return counters[name];
  for (const inner of Object.values(counters)) {
    if (inner && typeof inner === "object" && typeof (/** @type {any} */ (inner)[name]) === "number") {
      return /** @type {any} */ (inner)[name];
    }
  }
  return undefined;
}

async function refreshCounters() {
  let delay = COUNTERS_EVERY_MS;
  try {
    const response = await fetch("/api/v1/hub", { headers: authHeaders, cache: "no-store" });
    if (!response.ok) {
      $("counters-note").textContent = `GET /api/v1/hub answered ${response.status}: counters unavailable on this sidecar.`;
      delay = COUNTERS_MISSING_EVERY_MS;
    } else {
      const counters = await response.json();
      const body = /** @type {HTMLTableElement} */ ($("counters")).tBodies[0];
      body.replaceChildren(
        ...flatten(counters).map(([key, value]) => {
          const row = document.createElement("tr");
          const name = document.createElement("th");
          const cell = document.createElement("td");
          name.textContent = key;
          cell.textContent = value;
          row.append(name, cell);
          return row;
        }),
      );
      $("counters-note").textContent = `updated ${new Date().toLocaleTimeString()}`;
      for (const name of ["clients", "broadcasts", "deliveries", "evicted", "replays"]) {
        const value = counter(counters, name);
        $(`stat-${name}`).textContent = value === undefined ? "–" : String(value);
      }
    }
  } catch (err) {
    $("counters-note").textContent = `GET /api/v1/hub failed: ${err}`;
    delay = COUNTERS_MISSING_EVERY_MS;
  }
  setTimeout(refreshCounters, document.hidden ? Math.max(delay, COUNTERS_MISSING_EVERY_MS) : delay);
}

updateCount();
refreshCounters();

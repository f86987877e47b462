// The page: ask Rust for the sidecar's connection, then connect with the npm package
// sidecar-hub-client (bundled by Vite: the CSP allows scripts from the app itself only).
// window.__TAURI__ exists because tauri.conf.json sets app.withGlobalTauri.
import { SidecarClient, type AnyEvent } from "sidecar-hub-client";

/** What the `sidecar_connection` command answers (src-tauri/src/lib.rs). */
interface Connection {
  url: string;
  ws: string;
  token?: string;
}

declare global {
  interface Window {
    __TAURI__: { core: { invoke<T>(command: string): Promise<T> } };
  }
}

const { ws, token } = await window.__TAURI__.core.invoke<Connection>("sidecar_connection");
const state = document.getElementById("state") as HTMLOutputElement;
const log = document.getElementById("log") as HTMLPreElement;

function show(line: string): void {
  log.textContent = `${line}\n${log.textContent ?? ""}`;
}

const client = new SidecarClient(ws, {
  token,
  resyncOnFirstConnect: true,
  onResync: ({ channel, reason }) => show(`(resync: ${reason}${channel ? ` on ${channel}` : ""})`),
});
client.on("state", (change) => {
  state.value = change.state; // connecting | open | reconnecting | closed
});
client.on("*", (event: AnyEvent) => {
  show(`${event.channel ?? "-"} #${event.seq ?? "-"} ${event.type} ${JSON.stringify(event.payload)}`);
});

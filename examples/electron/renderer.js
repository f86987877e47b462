// Renderer (an ES module in a sandboxed page): connect with the npm package sidecar-hub-client,
// installed with the app. A page loaded with loadFile has no bundler to resolve the bare name
// "sidecar-hub-client", so it imports the module file by its path (with a bundler such as
// electron-vite: `import { SidecarClient } from "sidecar-hub-client"`). Either way the script
// comes from the app itself: the CSP is `script-src 'self'`.
import { SidecarClient } from "./node_modules/sidecar-hub-client/sidecar-client.js";

const { ws, token } = await window.sidecar.connection();

const state = document.getElementById("state");
const list = document.getElementById("events");

const client = new SidecarClient(ws, {
  token,
  resyncOnFirstConnect: true,
  onResync: ({ reason }) => show({ type: "(resync)", payload: { reason } }),
});
client.on("state", ({ state: now }) => {
  state.textContent = now; // connecting | open | reconnecting | closed
});
client.on("*", (event) => show(event));

document.getElementById("publish").addEventListener("click", () => window.sidecar.publishDemo());

function show(event) {
  const item = document.createElement("li");
  item.textContent = `${event.channel ?? "-"} #${event.seq ?? "-"} ${event.type} ${JSON.stringify(event.payload)}`;
  list.prepend(item);
}

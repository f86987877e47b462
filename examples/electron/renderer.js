// Renderer (an ES module in a sandboxed page): connect with the client the sidecar serves.
// Without the client, a bare socket works too:
//   new WebSocket(ws, ["sidecar.v1", `auth.${token}`])

const { url, ws, token } = await window.sidecar.connection();
const { SidecarClient } = await import(`${url}/client/sidecar-client.js`);

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
  item.textContent = `${event.seq ?? "-"} ${event.type} ${JSON.stringify(event.payload)}`;
  list.prepend(item);
}

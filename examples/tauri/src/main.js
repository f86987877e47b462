// Frontend: ask Rust for the sidecar's connection, then use the client it serves.
// (window.__TAURI__ exists because tauri.conf.json sets app.withGlobalTauri.)
const { url, ws, token } = await window.__TAURI__.core.invoke("sidecar_connection");
const { SidecarClient } = await import(`${url}/client/sidecar-client.js`);

const log = document.getElementById("log");
const client = new SidecarClient(ws, { token });
client.on("state", (change) => {
  document.getElementById("state").value = change.state;
});
client.on("*", (envelope) => {
  log.textContent = `${envelope.type} ${JSON.stringify(envelope.payload)}\n` + log.textContent;
});

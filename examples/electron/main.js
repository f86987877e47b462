"use strict";
/**
 * Electron main process: start the sidecar before the first window, hand its URL and token
 * to the renderer through the preload script, and stop it when the app quits.
 *
 *   npm install && npm start     # development: runs ../../scripts/serve
 *
 * Packaged, the binary from `scripts/build-binary` ships as an extra resource
 * (electron-builder: `"extraResources": [{"from": "<build folder>", "to": "sidecar"}]`).
 */

const { app, BrowserWindow, dialog, ipcMain } = require("electron");
const path = require("node:path");

const { binaryName, defaultCommand, startSidecar } = require("./sidecar-process");

/** What to run: the shipped binary when packaged, the checkout's scripts/serve otherwise. */
function sidecarCommand() {
  if (!app.isPackaged) return defaultCommand();
  return { command: path.join(process.resourcesPath, "sidecar", binaryName()), args: [] };
}

let sidecar = null;
let stopping = null;

async function start() {
  try {
    sidecar = await startSidecar({
      ...sidecarCommand(),
      // a page from loadFile() sends `Origin: null`: allow it (and only it, with the token)
      extraArgs: ["--allowed-origins", "null"],
    });
  } catch (err) {
    // {"event":"error","error":"port-in-use",...}, an early exit, or no line at all
    dialog.showErrorBox("The sidecar did not start", `${err.message}\n\n${err.stderr.join("\n")}`);
    app.exit(1);
    return;
  }
  sidecar.exited.then(({ code, signal }) => {
    if (stopping) return;
    dialog.showErrorBox("The sidecar stopped", `exit code ${code}, signal ${signal}`);
    app.quit();
  });
  ipcMain.handle("sidecar:connection", () => sidecar.connection);
  ipcMain.handle("sidecar:publish-demo", async () => {
    const response = await fetch(`${sidecar.ready.url}/api/v1/events`, {
      method: "POST",
      headers: { Authorization: `Bearer ${sidecar.ready.token}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        type: "stream:created",
        payload: { projectId: "demo", streamId: `s${Date.now()}`, name: "from the main process" },
      }),
      signal: AbortSignal.timeout(5000),
    });
    return response.status;
  });
  createWindow();
}

function createWindow() {
  const window = new BrowserWindow({
    width: 900,
    height: 600,
    webPreferences: {
      preload: path.join(__dirname, "preload.js"),
      contextIsolation: true,
      nodeIntegration: false,
      sandbox: true,
    },
  });
  window.loadFile(path.join(__dirname, "index.html"));
}

app.whenReady().then(start);

app.on("window-all-closed", () => app.quit());

// Stop the sidecar before quitting: close its stdin, SIGTERM, a deadline, then kill. If
// this process dies instead, the sidecar notices (--parent-pid, stdin EOF) and exits.
app.on("before-quit", (event) => {
  if (!sidecar || sidecar.child.exitCode !== null) return;
  event.preventDefault();
  if (stopping) return;
  stopping = sidecar.stop({ timeoutMs: 3000 }).finally(() => app.quit());
});

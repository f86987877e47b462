"use strict";
/**
 * Preload (sandboxed): the renderer gets `window.sidecar`, never Node or ipcRenderer itself.
 */

const { contextBridge, ipcRenderer } = require("electron");

contextBridge.exposeInMainWorld("sidecar", {
  /** @returns {Promise<{url: string, ws: string, token: string}>} */
  connection: () => ipcRenderer.invoke("sidecar:connection"),
  /** Ask the main process to publish a demo event; resolves with the HTTP status (202). */
  publishDemo: () => ipcRenderer.invoke("sidecar:publish-demo"),
});

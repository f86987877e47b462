// Each line marked `expect-error` must fail to compile on its own (tests/test_npm_package.py
// checks that tsc reports errors on exactly those lines, like tsd's expectError).
import { SidecarClient } from "sidecar-hub-client";
import type { EventMap } from "sidecar-hub-client/events";

const client = new SidecarClient("ws://127.0.0.1:3008/ws", { token: "t" });
client.send("chat:send", { conversationId: 1, content: "hi" }); // expect-error: a wrong field type (the catch-all's hole)
client.send("chat:send", { conversationId: "c1" }); // expect-error: a missing field
client.send("chat:cancel", { conversation: "c1" }); // expect-error: a misspelt field
client.send("stream:created", { projectId: "p", streamId: "s", name: "n" }); // expect-error: a server -> client type
client.send("channel:subscribe", { channel: "a:1" }); // expect-error: the hub's own namespace
client.on("stream:created", (p) => void p.streamid); // expect-error: a typo
client.on("stream:created", (p: { streamId: number }) => void p); // expect-error: a wrong payload type
client.on("artifact:created", (p) => void p.filename); // expect-error: one shape of a union, unnarrowed
client.on("channel:error", (p) => void (p.code satisfies number)); // expect-error: code is a string
client.on("resync", (info) => void (info.channel satisfies string)); // expect-error: null for the default channel
client.on("state", (change) => void (change.state satisfies "open")); // expect-error: four states
client.subscribe("project:p1", { since: 5 }); // expect-error: since is "<epoch>:<seq>"
new SidecarClient("ws://x", { channels: [{ name: "a:1" }] }); // expect-error: a spec names its channel
new SidecarClient("ws://x", { getToken: () => 5 }); // expect-error: a token is a string
const wrong: EventMap["stream:created"] = { projectId: "p", streamId: "s" }; // expect-error: name missing
void wrong;

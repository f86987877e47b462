// A consumer of sidecar-hub-client that must type-check under `strict` (tests/test_npm_package.py).
import {
  SidecarClient,
  SUBPROTOCOL,
  VERSION,
  backoffDelay,
  isChannelName,
  parseSince,
  shouldReconnect,
  type AnyEvent,
  type ErrorInfo,
  type Position,
  type ResyncInfo,
  type StateChange,
  type StreamCreatedPayload,
} from "sidecar-hub-client";
import type { ChannelErrorPayload, ClientEventMap, EventMap } from "sidecar-hub-client/events";
import schema from "sidecar-hub-client/schema.json";

const protocol: "sidecar.v1" = SUBPROTOCOL;
const client = new SidecarClient("ws://127.0.0.1:3008/ws", {
  getToken: async () => "a-token",
  channels: ["project:p1", { channel: "chat:c9", since: "E1:3", token: () => "sub-token" }],
  since: "E0:5,project:p1@P1:2",
  resyncOnFirstConnect: true,
  onResync: (info: ResyncInfo) => {
    const channel: string | null = info.channel;
    void channel;
  },
  onError: (info: ErrorInfo) => {
    const retrying: boolean = info.retrying;
    void retrying;
  },
  maxUrlLength: 2000,
  channelRate: { limit: 10, window: 1000 },
});
client.on("stream:created", (payload, event) => {
  const id: string = payload.streamId;
  const channel: string | undefined = event.channel;
  const seq: number | undefined = event.seq;
  void [id, channel, seq];
});
client.on("artifact:created", (payload) => {
  if ("filename" in payload) void payload.filename;
  else void payload.isSharded;
});
client.on("channel:error", (payload) => {
  const code: string = payload.code;
  void code;
});
client.on("connection:status", (payload) => {
  const state = payload.channels?.["project:p1"];
  if (state) void (state.recovered satisfies boolean);
});
client.on("*", (event: AnyEvent) => {
  if (event.type === "stream:archived") void event.payload.outcome;
});
client.on("state", (change: StateChange) => void change.state);
client.on("resync", (info) => void info.reason);
client.on("error", (info) => void info.code);
client.on("app:custom-thing", (payload) => void payload["anything"]);
client.subscribe("doc:9:comments", { since: "H1:3" });
client.subscribe("user:42", { token: async () => "sub-token" });
client.unsubscribe("project:p1");
const where: Position | null = client.position("chat:c9");
const channels: string[] = client.channels;
client.send("chat:send", { conversationId: "c1", content: "hi" });
client.send("app:ping", { anything: 1 });
const sent: boolean = client.send("chat:cancel", { conversationId: "c1" });
const created: StreamCreatedPayload = { projectId: "p", streamId: "s", name: "n" };
const fromMap: EventMap["stream:created"] = created;
const cancel: ClientEventMap["chat:cancel"] = { conversationId: "c1" };
const refused: ChannelErrorPayload = { channel: "a:1", code: "limit", message: "m" };
const title: string = schema.title;
void [protocol, VERSION, backoffDelay(1), shouldReconnect(1000), isChannelName("a:b")];
void [parseSince("E:1").get(""), where, channels, sent, fromMap, cancel, refused, title];
client.close();

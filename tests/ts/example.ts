// A typed use of the JavaScript client, as the docs show it, checked by tests/test_typescript.py with
// `tsc --noEmit` (tsconfig.json, strict) against wsgate/static/client.d.ts. It is type-checked, never run.
import {
  GatewayClosed,
  GatewayError,
  type Reconnect,
  reconnectAdvice,
  type HistoryData,
  type Json,
  type RoomMessage,
  type SubscribedData,
  WsgateClient,
} from "https://gateway.example.com/client.js";

declare function fetchToken(): Promise<string>;
declare function render(room: string | undefined, data: Json): void;
declare function reloadRoom(room: string): void;

const client = new WsgateClient("wss://gateway.example.com/ws", {
  getToken: () => fetchToken(), // asked at every connection, and refreshed before it expires
  minBackoff: 100,
  maxBackoff: 10_000,
  requestTimeout: 5_000,
});
const anonymous = new WsgateClient("wss://gateway.example.com/ws", { token: "a JWT", WebSocket });
anonymous.close();

const stop: () => void = client.on("message", (message: RoomMessage) => render(message.room, message.data));
stop();
client.on("open", ({ clientId, connects }) => console.log(clientId, connects > 1 ? "reconnected" : "connected"));
client.on("close", ({ code, reason, reconnect }) => console.log("closed", code, reason, reconnect));
const advice: Reconnect = reconnectAdvice(1012, "service restart [reconnect=now]");
console.log(advice, client.protocol, client.stopped instanceof GatewayClosed ? client.stopped.code : null);
client.on("recovered", ({ room, data }) => console.log(room, "recovered from offset", data.offset));
client.on("recovery_failed", ({ room }) => reloadRoom(room));
client.on("error", (error) => {
  if (error instanceof GatewayError) console.log(error.text, error.detail ?? "", error.code, error.temporary, error.transient);
});
client.on("presence_diff", ({ room, data }) => console.log(room, data.joins.length, data.leaves[0]?.user_id));
client.on("unsubscribed", ({ room }) => console.log("left", room));
client.on("typing", (message) => console.log(message.type, message.timestamp)); // a plugin's message type

await client.connect();
await client.ready;
try {
  const subscribed: SubscribedData = await client.subscribe("chat:lobby"); // rejects with a GatewayError
  console.log(subscribed.client_count, subscribed.offset, subscribed.epoch, subscribed.recovered);
} catch (error) {
  if (error instanceof GatewayError && error.text === "not allowed") console.log("no entry");
}
client.publish("chat:lobby", { text: "hi" });
client.publish("chat:lobby", { text: "again" }, { idempotencyKey: "msg-7f3a9c" });
client.broadcast("hello, everyone");
const roundTrip: number = await client.ping(); // milliseconds
console.log(roundTrip, "ms");

const page: HistoryData = await client.history("chat:lobby", 20);
const older = await client.history("chat:lobby", 20, page.messages[0]?.offset);
for (const message of older.messages) console.log(message.offset, message.epoch, message.client_id, message.data);

console.log(client.clientId, client.userId, client.connects, client.expiresAt, client.refreshes);
console.log([...client.rooms], client.positions.get("chat:lobby")?.offset);
await client.unsubscribe("chat:lobby");
client.close();

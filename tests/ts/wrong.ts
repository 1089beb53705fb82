// Wrong uses of the JavaScript client: tests/test_typescript.py expects tsc to report exactly these errors, one
// per line marked "error", so the declarations are shown to catch them (a declaration of `any` would pass them all).
import { WsgateClient } from "https://gateway.example.com/client.js";

const client = new WsgateClient("wss://gateway.example.com/ws", { token: 42 }); // error: a token is a string
await client.subscribe({ room: "chat:lobby" }); // error: the room is a string
client.publish({ text: "hi" }); // error: publish takes the room first
client.publish("chat:lobby", "hi", { idempotency_key: "k" }); // error: the option is idempotencyKey
client.on("open", ({ client_id }) => console.log(client_id)); // error: the open event says clientId
const rtt: string = await client.ping(); // error: ping resolves with milliseconds, a number

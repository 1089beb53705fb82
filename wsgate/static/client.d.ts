// TypeScript declarations of wsgate's JavaScript client (wsgate/static/client.js, served at /client.js).
//
// They describe the client's public API: the WsgateClient class, its options, methods and events with their
// payloads, GatewayError, and the shapes of the server messages it hands over (docs: protocol and clients pages).
// The client runs in a browser (or any runtime with a WebSocket global): the declarations use the DOM's
// `WebSocket` type, so a project needs "DOM" in its `lib` (a browser project has it by default).
//
// Checked by tests/test_typescript.py: `tsc --noEmit` (strict) on tests/ts/example.ts, and a wrong use that must
// fail. A change here is a change of the client's API: docs/versioning.md says which ones break.

/** Any value JSON can carry: what `publish` and `broadcast` send and what `data` holds once parsed. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Where a room with history stands: `offset` counts 1, 2, 3... within one `epoch` (compared for equality only). */
export interface Position {
  offset: number;
  epoch: string;
}

/** Any server message: a JSON object with a `type` and `timestamp` (Unix time in milliseconds). */
export interface ServerMessage {
  type: string;
  room?: string;
  data?: unknown;
  client_id?: string;
  error?: string;
  detail?: string;
  /** Protocol 2 errors: the error's stable number (docs/protocol.md, "Error codes"). */
  code?: number;
  /** Protocol 2 errors: whether the same request may succeed later. */
  temporary?: boolean;
  timestamp: number;
  /** Rooms with history: the message's place in the room. */
  offset?: number;
  /** Rooms with history: the run of offsets it belongs to. */
  epoch?: string;
  /** On a reply: the id of the request it answers (the clients give every request one). */
  id?: string | number;
}

/** A room's message (`room` set) or a broadcast (no `room`), as the "message" event hands it over. */
export interface RoomMessage<T = Json> extends ServerMessage {
  type: "message";
  data: T;
  /** The sender's client id (the HTTP API's `api.server_id` for messages published through it). */
  client_id: string;
}

/** The `data` of a `subscribed` answer: what `subscribe()` resolves with. */
export interface SubscribedData {
  room: string;
  /** Members of the room on this node, the subscriber included. */
  client_count: number;
  /** Rooms with history: the room's last offset (0 before its first message). */
  offset?: number;
  /** Rooms with history: the current epoch ("" before the first message). */
  epoch?: string;
  /** Only after a re-subscription with `since`: true when nothing was missed (the missed messages follow). */
  recovered?: boolean;
}

/** The `data` of a `history` answer: what `history()` resolves with. */
export interface HistoryData extends Position {
  /** The kept messages, oldest first; [] below the first kept offset when paging back with `before`. */
  messages: RoomMessage[];
}

/** A member of a presence room (`presence.rooms`), in `presence` answers and `presence_diff` events. */
export interface PresenceMember {
  client_id: string;
  /** Members identified by the JWT authenticator: the token's `sub`. */
  user_id?: string;
  /** The claims listed in `presence.claims`. */
  claims?: Record<string, Json>;
}

/** Joins and leaves gathered over `presence.interval` (with `presence.events = true`). */
export interface PresenceDiffMessage extends ServerMessage {
  type: "presence_diff";
  room: string;
  data: { joins: PresenceMember[]; leaves: PresenceMember[] };
}

/** A room the gateway took the client out of (a refreshed token no longer allows it). */
export interface UnsubscribedMessage extends ServerMessage {
  type: "unsubscribed";
  room: string;
  data: { room: string };
}

/** The "open" event: a connection is up and the client's rooms are subscribed again. */
export interface OpenEvent {
  clientId: string;
  /** Connections opened so far, this one included (1 + reconnections). */
  connects: number;
}

/** What a client should do after a close (docs/protocol.md, "Reconnect advice"). */
export type Reconnect = "no" | "backoff" | "now";

/** The "close" event: the WebSocket close code and reason, and the advice the client follows: it reconnects
 * (at once for "now", with backoff for "backoff") unless `close()` was called or the advice is "no". */
export interface CloseInfo {
  code: number;
  reason: string;
  reconnect: Reconnect;
}

/** The "recovered" and "recovery_failed" events, after a reconnection's re-subscription with `since`. */
export interface RecoveryEvent {
  room: string;
  data: SubscribedData;
}

/** The events `on()` knows, with their payloads. Any other server message type arrives as a ServerMessage. */
export interface WsgateClientEvents {
  /** Room messages and broadcasts. */
  message: RoomMessage;
  open: OpenEvent;
  close: CloseInfo;
  recovered: RecoveryEvent;
  /** The room could not be recovered: reload its state from your backend. */
  recovery_failed: RecoveryEvent;
  /** A GatewayError answering no request, or what `getToken` threw, or a failed token refresh. */
  error: unknown;
  presence_diff: PresenceDiffMessage;
  unsubscribed: UnsubscribedMessage;
}

/** Options of `publish`. */
export interface PublishOptions {
  /**
   * 1 to 64 characters: publishing again with the same key (after "publish outcome unknown" or a lost
   * connection) delivers the message once; a retry whose key was used is answered with nothing (the first's
   * delivery is the sender's copy). Keys are the user's (the token's `sub`), or this connection's when anonymous.
   */
  idempotencyKey?: string;
}

export interface ClientOptions {
  /** A JWT, sent as the subprotocol pair ["bearer", token]. */
  token?: string;
  /** Asked for a token at every connection and before the current one expires (then sent as `refresh`). */
  getToken?: () => string | Promise<string>;
  /** Milliseconds before the first reconnection attempt, at most (default 100). */
  minBackoff?: number;
  /** The backoff's ceiling in milliseconds (default 10000). */
  maxBackoff?: number;
  /** Milliseconds a request waits for its reply before it rejects with a RequestTimeout (default 10000). */
  requestTimeout?: number;
  /** A WebSocket implementation (default: the global one). */
  WebSocket?: typeof WebSocket;
}

/** An `error` answer from the gateway: `text` is the documented error text, `detail` the optional detail,
 * `code` and `temporary` what a protocol 2 gateway adds (undefined from a gateway that speaks only protocol 1). */
export class GatewayError extends Error {
  constructor(text: string, detail?: string, code?: number, temporary?: boolean);
  static of(message: ServerMessage): GatewayError;
  readonly name: "GatewayError";
  readonly text: string;
  readonly detail: string | undefined;
  readonly code: number | undefined;
  readonly temporary: boolean | undefined;
  /** Whether the same request may succeed later (`temporary`, or a known transient text). */
  readonly transient: boolean;
}

/** The gateway closed the connection and said not to come back: the client stopped (`connect()` rejects). */
export class GatewayClosed extends Error {
  constructor(code: number, reason: string);
  readonly name: "GatewayClosed";
  readonly code: number;
  readonly reason: string;
}

/** The advice at the end of a protocol 2 close reason, else the close code's (the gateway's registry). */
export function reconnectAdvice(code: number, reason: string): Reconnect;

/** Whether `epoch` began after `than` ("" first, then by the time it began), as the gateway orders epochs. */
export function laterEpoch(epoch: string, than: string): boolean;

/** No reply to a request within the client's `requestTimeout`; the message names the request and its id. */
export class RequestTimeout extends Error {
  constructor(message: string);
  readonly name: "RequestTimeout";
}

export class WsgateClient {
  /** @param url the gateway's WebSocket URL, e.g. "wss://gateway.example.com/ws" */
  constructor(url: string, options?: ClientOptions);

  readonly url: string;
  /** This connection's client id (null before the first `connected`). */
  readonly clientId: string | null;
  /** The token's `sub` for a client identified by the JWT authenticator, else null. */
  readonly userId: string | null;
  /** The last position seen in each room with history: where a reconnection resumes (it only moves forward). */
  readonly positions: ReadonlyMap<string, Position>;
  /** Connections opened so far (1 + reconnections). */
  readonly connects: number;
  /** When the connection's token expires, Unix time in milliseconds (null: it does not). */
  readonly expiresAt: number | null;
  /** How many times the token was refreshed on an open connection. */
  readonly refreshes: number;
  /** The rooms the client is in, subscribed again after every reconnection. */
  readonly rooms: ReadonlySet<string>;
  /** Resolved while connected; replaced by a pending promise when a connection is lost; rejected with
   * GatewayClosed once the client stopped. */
  readonly ready: Promise<void>;
  /** Why the client stopped for good (the gateway said not to come back); null while it goes on. */
  readonly stopped: GatewayClosed | null;
  /** The protocol version the gateway speaks on this connection (1 when `connected` does not say). */
  readonly protocol: number;

  /** Listen for an event; returns a function that removes the handler. */
  on<K extends keyof WsgateClientEvents>(event: K, handler: (payload: WsgateClientEvents[K]) => void): () => void;
  /** Any other server message type: types added by plugins. */
  on(event: string, handler: (payload: ServerMessage) => void): () => void;

  /** Open the connection; resolves once connected (and subscribed again after a reconnection); rejects with
   * GatewayClosed once the gateway said not to come back. */
  connect(): Promise<void>;
  /** Close for good (no reconnection). */
  close(): void;
  /** Join a room (and again after every reconnection); rejects with a GatewayError. */
  subscribe(room: string): Promise<SubscribedData>;
  /** Leave a room; rejects with a GatewayError (e.g. "not subscribed to this room"). */
  unsubscribe(room: string): Promise<void>;
  /**
   * Send to a room the client is subscribed to; throws Error("not connected") without a connection.
   * With `idempotencyKey`, a retry within the gateway's `publish.idempotency_window` is delivered once.
   */
  publish(room: string, data: unknown, options?: PublishOptions): void;
  /** Send to every connected client; throws Error("not connected") without a connection. */
  broadcast(data: unknown): void;
  /** Round-trip time of a ping, in milliseconds. */
  ping(): Promise<number>;
  /**
   * The last `limit` kept messages of a room (below offset `before`, when given), at most the server's
   * `history.max_answer_bytes` of them: page back with `before` = the first message's offset.
   */
  history(room: string, limit?: number, before?: number): Promise<HistoryData>;
}

// wsgate JavaScript client: an ES module, served by the gateway at /client.js.
//
//   import { WsgateClient } from "/client.js";
//   const client = new WsgateClient("wss://gateway.example.com/ws", { token });
//   client.on("message", (message) => console.log(message.room, message.data));
//   await client.connect();
//   await client.subscribe("chat:lobby");
//   client.publish("chat:lobby", { text: "hi" });
//
// It reconnects after any disconnection (exponential backoff with full jitter),
// subscribes again to its rooms and, for rooms that keep history, asks for what
// it missed (`since` its last offset): no gap, no duplicate. A room that could
// not be recovered is reported with a "recovery_failed" event: reload its state.
//
// With `getToken` (a function returning a JWT, or a promise of one), every connection
// asks it for a token, and the client refreshes the token by itself before it expires
// (`connected` says when); the gateway would otherwise close with 4001 "token expired".
// Rooms the new token no longer allows are left: an "unsubscribed" event says which.
//
// Every request (subscribe, unsubscribe, history, ping, refresh) carries an `id` (a counter) and is settled
// by the reply with the same `id` (docs/protocol.md, "Request ids"); several may wait at once. One without a
// reply within `requestTimeout` ms rejects with a RequestTimeout. publish and broadcast wait for nothing and
// carry no id: an error they cause is an "error" event, never another request's answer. A reply whose id no
// request waits for (it came after its request timed out) is dropped, logged with console.debug.
//
// It asks for protocol 2 (`/ws?protocol=2`): errors carry a `code` and `temporary`, and a close says whether to
// come back (docs/protocol.md, "Reconnect advice"). Told not to (an operator's or the server's disconnect), it
// stops: the "close" event says `reconnect: "no"`, and `connect()` rejects with GatewayClosed. After a restart
// (1012) or an expired token (4001) it comes back at once (at most once per `maxBackoff`); else with backoff.

/**
 * @typedef {Object} ServerMessage
 * @property {string} type
 * @property {string} [room]
 * @property {*} [data]
 * @property {string} [client_id]
 * @property {string} [error]
 * @property {string} [detail]
 * @property {number} [code]       protocol 2: the error's stable number
 * @property {boolean} [temporary] protocol 2: whether the same request may succeed later
 * @property {number} timestamp
 * @property {string | number} [id]  the request id a reply answers (docs/protocol.md, "Request ids")
 * @property {number} [offset]  rooms with history: the message's place in the room
 * @property {string} [epoch]   rooms with history: the run of offsets it belongs to
 */

/**
 * @typedef {Object} ClientOptions
 * @property {string} [token]           sent as the subprotocol pair ["bearer", token]
 * @property {() => (string | Promise<string>)} [getToken] asked for a token at every connection and
 *           before the current one expires (then sent as `refresh`)
 * @property {number} [minBackoff=100]  milliseconds before the first reconnection attempt (at most)
 * @property {number} [maxBackoff=10000]
 * @property {number} [requestTimeout=10000] milliseconds a request waits for its reply (then: RequestTimeout)
 * @property {typeof WebSocket} [WebSocket] a WebSocket implementation (defaults to the browser's)
 */

/** Errors a re-subscription answers while the gateway's store is away, by text (a gateway that speaks only
 * the guide's protocol sends no `temporary`): tried again with backoff. */
const TRANSIENT = new Set(["history is unavailable", "presence is unavailable"]);

/** The protocol version asked for; a gateway that predates versions ignores it and speaks the guide's. */
const PROTOCOL = 2;

/** What to do after a close whose reason gives no advice: the gateway's registry (wsgate.errors.CLOSE_CODES;
 * a test keeps the two equal). A code not listed (1006: lost without a close frame): backoff. */
const RECONNECT_BY_CODE = {1000: "backoff", 1001: "backoff", 1002: "backoff", 1007: "backoff", 1008: "backoff",
  1009: "backoff", 1011: "backoff", 1012: "now", 1013: "backoff", 4001: "now"};

/**
 * "no", "backoff" or "now": the advice at the end of a protocol 2 close reason, else the code's.
 * @param {number} code @param {string} reason @returns {"no" | "backoff" | "now"}
 */
export function reconnectAdvice(code, reason) {
  const advised = / \[reconnect=(no|backoff|now)\]$/.exec(reason ?? "");
  return /** @type {any} */ (advised ? advised[1] : RECONNECT_BY_CODE[code] ?? "backoff");
}

/**
 * Whether `epoch` began after `than`: the shorter first ("" before any), then by text (a timed epoch starts with
 * the hex time it began), as the gateway's wsgate.history.later_epoch orders them.
 * @param {string} epoch @param {string} than @returns {boolean}
 */
export function laterEpoch(epoch, than) {
  return epoch.length !== than.length ? epoch.length > than.length : epoch > than;
}

/** An `error` answer from the gateway: `code` and `temporary` are undefined from a protocol 1 gateway. */
export class GatewayError extends Error {
  /** @param {string} text @param {string} [detail] @param {number} [code] @param {boolean} [temporary] */
  constructor(text, detail, code, temporary) {
    super(detail ? `${text}: ${detail}` : text);
    this.name = "GatewayError";
    this.text = text;
    this.detail = detail;
    this.code = code;
    this.temporary = temporary;
  }

  /** @param {ServerMessage} message */
  static of(message) {
    return new GatewayError(message.error ?? "", message.detail, message.code, message.temporary);
  }

  /** Whether the same request may succeed later. */
  get transient() {
    return this.temporary ?? TRANSIENT.has(this.text);
  }
}

/** The gateway closed the connection and said not to come back: the client stopped. */
export class GatewayClosed extends Error {
  /** @param {number} code @param {string} reason */
  constructor(code, reason) {
    super(`the gateway closed the connection (${code} ${reason}) and said not to reconnect`);
    this.name = "GatewayClosed";
    this.code = code;
    this.reason = reason;
  }
}

/** No reply to a request within the client's `requestTimeout` (milliseconds). */
export class RequestTimeout extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "RequestTimeout";
  }
}

export class WsgateClient {
  /** @param {string} url @param {ClientOptions} [options] */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { minBackoff: 100, maxBackoff: 10000, requestTimeout: 10000, ...options };
    /** @type {string | null} */
    this.clientId = null;
    /** @type {string | null} */
    this.userId = null;
    /** The last offset seen in each room with history: where a reconnection resumes. It only moves forward
     * (`advance`): a copy of an earlier message never takes it back, so nothing is replayed twice.
     * @type {Map<string, {offset: number, epoch: string}>} */
    this.positions = new Map();
    /** How many connections were opened (1 + reconnections). */
    this.connects = 0;
    /** When the connection's token expires, Unix time in milliseconds (null: it does not). @type {number | null} */
    this.expiresAt = null;
    /** How many times the token was refreshed on an open connection. */
    this.refreshes = 0;
    this.refreshTimer = null;
    /** @type {Set<string>} */
    this.rooms = new Set();
    /** @type {Map<string, Set<Function>>} */
    this.handlers = new Map();
    /** @type {WebSocket | null} */
    this.ws = null;
    this.closing = false;
    this.attempt = 0;
    /** Requests waiting for their reply, by request id (each reply carries its request's id).
     * @type {Map<number, {resolve: Function, reject: Function, timer: any}>} */
    this.pending = new Map();
    this.nextId = 1;
    this.started = false;
    this.isReady = false;
    /** Why the client stopped for good (the gateway said not to come back); null while it goes on.
     * @type {GatewayClosed | null} */
    this.stopped = null;
    /** The protocol version the gateway speaks on this connection (1 when `connected` does not say). */
    this.protocol = 1;
    this.cameBackAtOnce = -Infinity; // when the client last reconnected without waiting (Date.now())
    this.openedAt = null; // when this connection's `connected` came (Date.now()), null between connections
    this.newReady();
  }


  /**
   * Listen for "message" (room messages and broadcasts), "open", "close" ({code, reason, reconnect}), "recovered",
   * "recovery_failed", "error" (a GatewayError that answers no request), or any other server
   * message type ("presence_diff", types added by plugins).
   * @param {string} event @param {(payload: any) => void} handler @returns {() => void} unsubscribe
   */
  on(event, handler) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(handler);
    return () => this.handlers.get(event)?.delete(handler);
  }

  /** @param {string} event @param {any} payload */
  emit(event, payload) {
    for (const handler of this.handlers.get(event) ?? []) handler(payload);
  }

  /** Open the connection; resolves once connected (and subscribed again after a reconnection), rejects with
   * GatewayClosed once the gateway said not to come back. */
  connect() {
    if (this.stopped) return Promise.reject(this.stopped);
    if (!this.started) {
      this.started = true;
      this.open();
    }
    return this.ready;
  }

  /** Close for good (no reconnection). */
  close() {
    this.closing = true;
    clearTimeout(this.refreshTimer);
    this.ws?.close(1000);
  }

  /**
   * Join a room (and again after every reconnection). Resolves with the `subscribed` data,
   * rejects with a GatewayError.
   * @param {string} room @returns {Promise<any>}
   */
  async subscribe(room) {
    this.rooms.add(room);
    await this.connect();
    return this.subscribeNow(room);
  }

  /** @param {string} room */
  async unsubscribe(room) {
    this.rooms.delete(room);
    this.positions.delete(room);
    await this.request({ type: "unsubscribe", room });
  }

  /**
   * Send to a room the client is subscribed to. `options.idempotencyKey` (1 to 64 characters): publishing
   * again with the same key within the gateway's `publish.idempotency_window` delivers it once (a retry whose
   * key was used is answered with nothing: the first's delivery is the sender's copy); the keys are the
   * user's, or this connection's when anonymous.
   * @param {string} room @param {*} data @param {{idempotencyKey?: string}} [options]
   */
  publish(room, data, options = {}) {
    const message = { type: "publish", room, data };
    if (options.idempotencyKey !== undefined) message.idempotency_key = options.idempotencyKey;
    this.send(message);
  }

  /** Send to every connected client. @param {*} data */
  broadcast(data) {
    this.send({ type: "broadcast", data });
  }

  /** Round-trip time of a ping, in milliseconds. @returns {Promise<number>} */
  async ping() {
    const started = performance.now();
    await this.request({ type: "ping" });
    return performance.now() - started;
  }

  /**
   * The last `limit` kept messages of a room (below offset `before`, when given), at most the server's
   * `history.max_answer_bytes` of them: page back with `before` = the first message's offset.
   * @param {string} room @param {number} [limit] @param {number} [before]
   */
  async history(room, limit, before) {
    const answer = await this.request({ type: "history", room, ...(limit ? { limit } : {}), ...(before ? { before } : {}) });
    return answer.data;
  }

  // --- internals ---------------------------------------------------------------------
  /** A pending `ready`: resolved when connected, rejected with GatewayClosed if the client stops first. */
  newReady() {
    /** Resolved while connected; replaced by a pending one when a connection is lost. @type {Promise<void>} */
    this.ready = new Promise((resolve, reject) => { this.readyResolve = resolve; this.readyReject = reject; });
    this.ready.catch(() => {}); // (nobody may be waiting: never an unhandled rejection)
  }


  async open() {
    if (this.closing) return;
    const Socket = this.options.WebSocket ?? WebSocket;
    let token = this.options.token;
    if (this.options.getToken) {
      try {
        token = await this.options.getToken();
      } catch (error) { // the application's getToken failed: try again after the backoff
        this.emit("error", error);
        this.retry();
        return;
      }
      if (this.closing) return; // closed while the token was fetched
    }
    const url = new URL(this.url, globalThis.location?.href); // (a relative URL, "/ws", as WebSocket takes it)
    url.protocol = url.protocol.replace(/^http/, "ws"); // (resolved against the page: http: -> ws:, https: -> wss:)
    url.searchParams.set("protocol", String(PROTOCOL));
    const ws = token ? new Socket(url.href, ["bearer", token]) : new Socket(url.href);
    this.ws = ws;
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => this.closed(ws, event);
  }

  /** Refresh the token before it expires (a fifth of its remaining life, 1 s to 60 s before). */
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    if (this.expiresAt === null || !this.options.getToken) return;
    const remaining = this.expiresAt - Date.now();
    const early = Math.min(60000, Math.max(1000, remaining * 0.2));
    const delay = Math.max(0, remaining - early);
    // setTimeout fires at once beyond 2^31-1 ms (about 24.8 days): wait in steps for longer-lived tokens
    this.refreshTimer = delay > 2 ** 31 - 1 ? setTimeout(() => this.scheduleRefresh(), 2 ** 31 - 1)
      : setTimeout(() => this.refresh(), delay);
  }

  async refresh() {
    const ws = this.ws;
    try {
      const token = await this.options.getToken();
      const answer = await this.request({ type: "refresh", token });
      this.expiresAt = answer.data.expires_at;
      this.refreshes += 1;
      this.scheduleRefresh();
    } catch (error) { // try again soon, on this connection only; at the expiry the gateway closes it
      this.emit("error", error);
      if (this.ws === ws && ws && ws.readyState === 1 && !this.closing) {
        this.refreshTimer = setTimeout(() => this.refresh(), 1000);
      }
    }
  }

  /** @param {WebSocket} ws @param {CloseEvent} event */
  closed(ws, event) {
    if (this.ws !== ws) return;
    this.ws = null;
    for (const waiting of this.pending.values()) {
      clearTimeout(waiting.timer);
      waiting.reject(new Error(`connection closed (${event.code})`));
    }
    this.pending.clear();
    clearTimeout(this.refreshTimer);
    // A connection that lasted lets the next attempt start from the shortest delay again; one closed at once
    // (a server in trouble) keeps the delay growing.
    if (this.openedAt !== null && Date.now() - this.openedAt >= this.options.maxBackoff) this.attempt = 0;
    this.openedAt = null;
    const reconnect = reconnectAdvice(event.code, event.reason);
    this.emit("close", { code: event.code, reason: event.reason, reconnect });
    if (this.closing) return;
    if (reconnect === "no") { // an operator's or the server's disconnect: it would be refused again
      this.closing = true;
      this.stopped = new GatewayClosed(event.code, event.reason);
      if (this.isReady) this.newReady();
      this.readyReject(this.stopped);
      return;
    }
    this.retry(reconnect === "now");
  }

  /** Open again after the backoff; `now` (a restart, an expired token): at once, at most once per
   * `maxBackoff` (a server that closes with 1012 at every connection is not hammered). */
  retry(now = false) {
    if (this.closing) return;
    if (this.isReady) { // a new promise only once the last one was kept: callers of connect() never hang
      this.isReady = false;
      this.newReady();
    }
    if (now && Date.now() - this.cameBackAtOnce >= this.options.maxBackoff) {
      this.cameBackAtOnce = Date.now();
      this.attempt = 1;
      this.open();
      return;
    }
    const ceiling = Math.min(this.options.maxBackoff, this.options.minBackoff * 2 ** this.attempt++);
    setTimeout(() => this.open(), Math.random() * ceiling); // full jitter: a fleet does not return at once
  }

  /** @param {ServerMessage} message */
  async receive(message) {
    if (message.type === "connected") {
      this.clientId = message.data.client_id;
      this.userId = message.data.user_id ?? null;
      this.protocol = message.data.protocol ?? 1;
      this.expiresAt = message.data.expires_at ?? null;
      this.scheduleRefresh();
      this.connects += 1;
      this.openedAt = Date.now();
      const later = [];
      for (const room of this.rooms) {
        try {
          await this.subscribeNow(room);
        } catch (error) { // one room failing (history unavailable, ...) must not keep the others out
          if (error instanceof GatewayError && error.transient) later.push(room);
          else this.emit("error", error);
        }
      }
      if (later.length) this.subscribeLater(this.ws, later, 500);
      this.emit("open", { clientId: this.clientId, connects: this.connects });
      this.isReady = true;
      this.readyResolve();
      return;
    }
    if (typeof message.room === "string" && Number.isInteger(message.offset) && typeof message.epoch === "string") {
      this.advance(message.room, message.offset, message.epoch); // a published message, of any type
    }
    const waiting = message.id !== undefined ? this.pending.get(message.id) : undefined;
    if (message.id !== undefined && !waiting) {
      // a plugin's push with an id of its own, a handler's second reply, a reply after its timeout: the
      // application sees it like any other message
      console.debug("wsgate client: no request waits for this id, passed on", message);
    }
    if (waiting) { // a reply: to the request with its id
      this.pending.delete(message.id);
      clearTimeout(waiting.timer);
      if (message.type === "error") waiting.reject(GatewayError.of(message));
      else waiting.resolve(message);
      return;
    }
    if (message.type === "unsubscribed") { // not asked for: the gateway took it out (a refreshed token)
      this.rooms.delete(message.room);
      this.positions.delete(message.room);
    }
    if (message.type === "error") this.emit("error", GatewayError.of(message));
    else this.emit(message.type, message); // "message", "presence_diff", "unsubscribed", extension types
  }

  /**
   * Subscribe again, with backoff, to rooms the gateway could not recover just now (its history store away).
   * @param {WebSocket | null} ws @param {string[]} rooms @param {number} delay
   */
  subscribeLater(ws, rooms, delay) {
    setTimeout(async () => {
      if (this.ws !== ws || this.closing) return; // a new connection subscribes everything again
      const still = [];
      for (const room of rooms) {
        if (!this.rooms.has(room)) continue;
        try {
          await this.subscribeNow(room);
        } catch (error) {
          if (error instanceof GatewayError && error.transient) still.push(room);
          else this.emit("error", error);
        }
      }
      if (still.length) this.subscribeLater(ws, still, Math.min(delay * 2, 10000));
    }, delay);
  }

  /** @param {string} room */
  async subscribeNow(room) {
    const since = this.positions.get(room);
    const request = { type: "subscribe", room, ...(since ? { since } : {}) };
    const answer = await this.request(request);
    const data = answer.data;
    if (data.epoch !== undefined && since && !data.recovered) { // (its history lost a tail, say)
      this.positions.set(room, { offset: data.offset, epoch: data.epoch }); // where the room stands, even if back
    } else if (data.epoch !== undefined && !since) {
      this.advance(room, data.offset, data.epoch, true); // from here on, nothing missed
    }
    if (since) this.emit(data.recovered ? "recovered" : "recovery_failed", { room, data });
    return data;
  }

  /**
   * Move a room's position to (offset, epoch) if that is forward: a room without one takes it; else the same
   * epoch with a higher offset, or a later epoch (`laterEpoch`: the room's history began again), or, when
   * `announced` (a `subscribed` answer: where the room stands now), any other epoch. A copy of an earlier
   * message, or a `subscribed` answer racing live messages, never moves it back.
   * @param {string} room @param {number} offset @param {string} epoch @param {boolean} [announced]
   */
  advance(room, offset, epoch, announced = false) {
    const current = this.positions.get(room);
    if (!current || (epoch === current.epoch && offset > current.offset)
        || (epoch !== current.epoch && (announced || laterEpoch(epoch, current.epoch)))) {
      this.positions.set(room, { offset, epoch });
    }
  }

  /** @param {object} message */
  send(message) {
    if (!this.ws || this.ws.readyState !== 1) throw new Error("not connected");
    this.ws.send(JSON.stringify(message));
  }

  /**
   * Send `message` with the next request id; resolves with the reply that carries it, rejects with a
   * GatewayError (an `error` reply), a RequestTimeout, or an Error when the connection goes.
   * @param {{type: string} & Record<string, any>} message @returns {Promise<ServerMessage>}
   */
  request(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timeout = this.options.requestTimeout;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RequestTimeout(`no reply to ${message.type} (id ${id}) within ${timeout} ms`));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.send({ ...message, id });
      } catch (error) {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(error);
      }
    });
  }
}

// cdc-gateway client: subscriptions that survive reconnects with nothing missed and nothing
// repeated. One WebSocket per client; every subscription keeps the position of the last event
// it received and resubscribes with it (`since`) after a reconnect; the gateway replays what
// was missed or answers `recovered: false`, and then the subscription starts over (onReset,
// and a fresh snapshot when it asked for one). Works in browsers and in Node (pass `ws`).
// No runtime dependencies, and a single module, so the file itself can be served to a page.
/** A protocol error (`{"type":"error"}`) as a value. */
export class GatewayError extends Error {
    code;
    topic;
    requestId;
    constructor(message) {
        super(`${message.code}: ${message.message}`);
        this.name = "GatewayError";
        this.code = message.code;
        this.topic = message.topic;
        this.requestId = message.id;
    }
}
/** The connection ended after some rows of a snapshot and before its `synced`: the rows
 * received are part of the table only, and the rows still to come cannot be resumed (the
 * snapshot is as of the ack's position, not a stream of records after it). `onReset` gets this,
 * and a fresh snapshot follows on the next connection. */
export class SnapshotInterrupted extends Error {
    topic;
    /** Snapshot rows that reached the callback before the connection ended. */
    rowsReceived;
    constructor(topic, rowsReceived) {
        super(`the snapshot of ${topic} was cut short by a reconnect after ${rowsReceived} rows`);
        this.name = "SnapshotInterrupted";
        this.topic = topic;
        this.rowsReceived = rowsReceived;
    }
}
/** The gateway closed the connection for a reason reconnecting cannot cure (4001 or 4002
 * with a fixed token), or the token could not be obtained. */
export class ConnectionError extends Error {
    closeCode;
    reason;
    constructor(closeCode, reason) {
        super(`connection closed: ${closeCode} ${reason}`.trim());
        this.name = "ConnectionError";
        this.closeCode = closeCode;
        this.reason = reason;
    }
}
/** Close codes of protocol section 3 that the client acts on. */
const UNAUTHORIZED = 4001;
const AUTH_TIMEOUT = 4002;
/** Close code the client uses when it drops a connection itself (an application code). */
const CLIENT_DROP = 4000;
const OPEN = 1;
/** A connection that stayed open this long resets the backoff. */
const STABLE_MS = 5000;
const RATE_LIMIT_RETRY_MS = 1000;
/** Full-jitter exponential backoff: uniform in [0, min(max, min * 2^attempt)). */
export function backoffDelay(attempt, minDelayMs, maxDelayMs, random = Math.random) {
    const ceiling = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(attempt, 30));
    return Math.floor(random() * ceiling);
}
/** The `exp` claim of a JWT in epoch milliseconds, or undefined when there is none. */
export function tokenExpiry(token) {
    const part = token.split(".")[1];
    if (part === undefined)
        return undefined;
    try {
        const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
        const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
        const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
        const claims = JSON.parse(new TextDecoder().decode(bytes));
        return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
    }
    catch {
        return undefined;
    }
}
/** Opens a client; it connects at once and reconnects until `close()`. */
export function createClient(url, options = {}) {
    return new Client(url, options);
}
class SubscriptionState {
    topic;
    options;
    onEvent;
    handlers;
    client;
    /** Set once the first ack arrived (for a snapshot, once `synced` came): from then on a
     * subscribe carries `since`. */
    kept;
    /** The ack's position of a snapshot whose `synced` has not come yet: it becomes the kept
     * position only when every row is in. */
    snapshotPosition;
    /** Snapshot rows handed to the application since that ack. */
    snapshotRows = 0;
    /** The subscribe in flight asked for a snapshot. */
    snapshotAsked = false;
    duplicatesDropped = 0;
    active = true;
    /** The request id of the subscribe this connection is waiting on, if any. */
    awaiting;
    /** The subscribe in flight carried `since`. */
    resuming = false;
    constructor(topic, options, onEvent, handlers, client) {
        this.topic = topic;
        this.options = options;
        this.onEvent = onEvent;
        this.handlers = handlers;
        this.client = client;
    }
    get position() {
        return { ...this.kept };
    }
    unsubscribe() {
        if (!this.active)
            return;
        this.active = false;
        this.client._unsubscribe(this);
    }
    request(id) {
        const message = { action: "subscribe", topic: this.topic, id };
        if (this.options.filters)
            message.filters = this.options.filters;
        this.resuming = this.kept !== undefined;
        this.snapshotAsked = !this.resuming && this.options.snapshot === true;
        this.snapshotPosition = undefined;
        if (this.kept !== undefined)
            message.since = { ...this.kept };
        else if (this.snapshotAsked)
            message.snapshot = true;
        if (this.options.presence)
            message.presence = true;
        this.awaiting = id;
        return message;
    }
    /** A connection ended: how many rows of an unfinished snapshot the application holds (0 when
     * no snapshot was under way). The next subscribe takes the snapshot again. */
    interrupted() {
        const rows = this.snapshotPosition !== undefined ? this.snapshotRows : 0;
        this.snapshotPosition = undefined;
        this.snapshotRows = 0;
        return rows;
    }
    /** Takes the ack's position; true when the subscription must start over. */
    acked(ack) {
        this.awaiting = undefined;
        if (this.resuming && ack.recovered === true) {
            // The missed events follow: keep our own position, or they would count as repeats.
            this.kept = { ...ack.position, ...this.kept };
            return false;
        }
        if (this.resuming) {
            // Starting over: the kept position belongs to the state the application drops.
            this.kept = { ...ack.position };
            return true;
        }
        if (this.snapshotAsked) {
            // The rows are as of this position; resuming from it before they have all arrived
            // would skip the rest of them.
            this.snapshotPosition = { ...ack.position };
            this.snapshotRows = 0;
            return false;
        }
        this.kept = { ...ack.position };
        return false;
    }
    /** True when the `synced` belongs to this subscription; the snapshot's position is kept. */
    synced() {
        // A `synced` that arrives while a fresh subscribe waits for its ack ends the snapshot of
        // the subscription being replaced.
        if (this.awaiting !== undefined && !this.resuming)
            return false;
        if (this.snapshotPosition !== undefined) {
            this.kept = { ...this.snapshotPosition, ...this.kept };
            this.snapshotPosition = undefined;
            this.snapshotRows = 0;
        }
        return true;
    }
    /** Forget the position, so the next subscribe takes a fresh snapshot. */
    restart() {
        this.kept = undefined;
        this.snapshotPosition = undefined;
        this.snapshotRows = 0;
    }
    /** True when the message is new; raises the kept position. */
    admit(message) {
        // The gateway acks a subscribe before its first event, so data that arrives while a
        // fresh subscribe waits for its ack belongs to the subscription it replaces (an earlier
        // one of the topic, with other filters, or the one a reset re-snapshots).
        if (this.awaiting !== undefined && !this.resuming)
            return false;
        if (message.snapshot) {
            this.snapshotRows += 1;
            return true;
        }
        const kept = (this.kept ??= {});
        const qualified = message.source === undefined ? undefined : `${message.source}:${message.partition}`;
        const bare = String(message.partition);
        const key = qualified !== undefined && (qualified in kept || !(bare in kept)) ? qualified : bare;
        const last = kept[key];
        if (last !== undefined && message.offset <= last) {
            this.duplicatesDropped += 1;
            return false;
        }
        kept[key] = message.offset;
        return true;
    }
}
export class Client {
    url;
    options;
    WebSocketImpl;
    minDelayMs;
    maxDelayMs;
    refreshMarginMs;
    heartbeatMs;
    socket = null;
    currentState = "connecting";
    everOpened = false;
    attempt = 0;
    openedAt = 0;
    lastReceived = 0;
    nextId = 1;
    token;
    subscriptions = new Map();
    pending = new Map();
    listeners = {
        state: new Set(),
        error: new Set(),
    };
    reconnectTimer;
    refreshTimer;
    heartbeatTimer;
    constructor(url, options) {
        this.url = url;
        this.options = options;
        const impl = options.WebSocket ?? globalThis.WebSocket;
        if (!impl) {
            throw new TypeError("no WebSocket implementation: pass one as options.WebSocket (e.g. the ws package)");
        }
        this.WebSocketImpl = impl;
        this.minDelayMs = options.reconnect?.minDelayMs ?? 500;
        this.maxDelayMs = options.reconnect?.maxDelayMs ?? 30_000;
        this.refreshMarginMs = options.refreshMarginMs ?? 30_000;
        this.heartbeatMs = options.heartbeatMs ?? 20_000;
        void this.connect();
    }
    get state() {
        return this.currentState;
    }
    on(event, listener) {
        this.listeners[event].add(listener);
        return () => this.listeners[event].delete(listener);
    }
    /** Subscribes to a topic; one subscription per topic per client. The callback receives
     * every data message once, in order per partition, across reconnects. */
    subscribe(topic, options, onEvent, handlers = {}) {
        if (this.subscriptions.has(topic)) {
            throw new Error(`already subscribed to ${topic} (one subscription per topic per client)`);
        }
        if (this.currentState === "closed")
            throw new Error("the client is closed");
        const sub = new SubscriptionState(topic, options, onEvent, handlers, this);
        this.subscriptions.set(topic, sub);
        if (this.currentState === "open")
            this.sendSubscribe(sub);
        return sub;
    }
    /** Who watches `topic` over every replica (protocol section 10): its subscriber count and,
     * under `--auth jwt`, the users (token subjects). Rejects with a GatewayError (FORBIDDEN
     * for a topic the token may not read), or when the connection is not open or drops first. */
    presence(topic) {
        return new Promise((resolve, reject) => {
            if (this.currentState !== "open") {
                reject(new Error(`not connected (${this.currentState})`));
                return;
            }
            const id = this.request({ kind: "presence", resolve, reject });
            this.send({ action: "presence", topic, id });
        });
    }
    /** Drops the connection and reconnects after `delayMs` (default at once), resuming every
     * subscription: for applications that know the network changed, and for demos and tests. */
    reconnect(delayMs = 0) {
        if (this.currentState === "closed")
            return;
        this.dropSocket("reconnect requested");
        this.scheduleReconnect(delayMs);
    }
    /** Closes the connection for good; subscriptions stop. */
    close() {
        if (this.currentState === "closed")
            return;
        this.clearTimers();
        if (this.socket) {
            const socket = this.detach();
            socket.close(1000, "client closed");
        }
        this.setState("closed");
    }
    /** @internal */
    _unsubscribe(sub) {
        if (this.subscriptions.get(sub.topic) !== sub)
            return;
        this.subscriptions.delete(sub.topic);
        if (this.currentState === "open") {
            this.send({ action: "unsubscribe", topic: sub.topic, id: this.request({ kind: "other" }) });
        }
    }
    async connect() {
        this.setState(this.everOpened ? "reconnecting" : "connecting");
        const source = this.options.token;
        if (typeof source === "function") {
            try {
                this.token = await source();
            }
            catch (e) {
                this.emitError(e instanceof Error ? e : new Error(String(e)));
                this.scheduleReconnect();
                return;
            }
            // Closed meanwhile, or a second connect (after a reconnect()) got there first.
            if (this.currentState === "closed" || this.socket)
                return;
        }
        else {
            this.token = source;
        }
        let socket;
        try {
            socket = new this.WebSocketImpl(this.url);
        }
        catch (e) {
            this.emitError(e instanceof Error ? e : new Error(String(e)));
            this.setState("closed");
            return;
        }
        this.socket = socket;
        socket.onopen = () => this.opened();
        socket.onmessage = (event) => this.received(event.data);
        socket.onclose = (event) => this.closed(event.code ?? 1006, event.reason ?? "");
        // An error is always followed by a close, which does the work.
        socket.onerror = () => { };
    }
    opened() {
        this.openedAt = Date.now();
        this.lastReceived = this.openedAt;
        this.pending = new Map();
        if (this.heartbeatMs > 0) {
            this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatMs);
        }
        if (this.token !== undefined) {
            this.send({ action: "auth", token: this.token, id: this.request({ kind: "auth" }) });
        }
        else {
            this.ready();
        }
    }
    /** The connection may carry subscriptions: (re)subscribe every one. */
    ready() {
        this.everOpened = true;
        this.setState("open");
        for (const sub of [...this.subscriptions.values()]) {
            const rows = sub.interrupted();
            if (rows > 0) {
                // The application holds part of a snapshot: it starts over with the fresh one.
                this.call(() => sub.handlers.onReset?.(new SnapshotInterrupted(sub.topic, rows)));
                if (!sub.active || this.subscriptions.get(sub.topic) !== sub)
                    continue;
            }
            this.sendSubscribe(sub);
        }
    }
    sendSubscribe(sub) {
        this.send(sub.request(this.request({ kind: "subscribe", topic: sub.topic })));
    }
    received(raw) {
        this.lastReceived = Date.now();
        let message;
        try {
            const text = typeof raw === "string" ? raw : new TextDecoder().decode(raw);
            message = JSON.parse(text);
        }
        catch {
            this.emitError(new Error("the gateway sent a frame that is not JSON"));
            return;
        }
        switch (message.type) {
            case "data": {
                const sub = this.subscriptions.get(message.topic);
                if (sub && sub.admit(message))
                    this.call(() => sub.onEvent(message));
                break;
            }
            case "synced": {
                const sub = this.subscriptions.get(message.topic);
                if (sub && sub.synced())
                    this.call(() => sub.handlers.onSynced?.(message));
                break;
            }
            case "ack":
                if (message.id !== undefined)
                    this.pending.delete(message.id);
                if (message.action === "auth")
                    this.authenticated();
                else if (message.action === "subscribe")
                    this.subscribed(message);
                break;
            case "error":
                this.failed(message);
                break;
            case "reset": {
                const sub = this.subscriptions.get(message.topic);
                if (sub)
                    this.reset(sub, message);
                break;
            }
            case "presence": {
                const pending = message.id !== undefined ? this.pending.get(message.id) : undefined;
                if (pending?.kind === "presence" && message.id !== undefined) {
                    this.pending.delete(message.id);
                    pending.resolve(message);
                }
                else if (message.id === undefined) {
                    const sub = this.subscriptions.get(message.topic);
                    if (sub?.options.presence)
                        this.call(() => sub.handlers.onPresence?.(message));
                }
                break;
            }
            case "ping":
                this.send({ action: "pong" });
                break;
            case "pong":
                break;
        }
    }
    authenticated() {
        this.scheduleRefresh();
        if (this.currentState !== "open")
            this.ready();
    }
    subscribed(ack) {
        const sub = this.subscriptions.get(ack.topic);
        // An ack of a subscribe this connection no longer waits for (it was replaced) is stale.
        if (!sub || (ack.id !== undefined && sub.awaiting !== ack.id))
            return;
        const reset = sub.acked(ack);
        this.call(() => sub.handlers.onAck?.(ack));
        if (reset)
            this.reset(sub, ack);
    }
    /** The subscription cannot resume: the application drops its state, and a snapshot
     * subscription is replaced by one that sends the rows as they now stand, then `synced`. */
    reset(sub, cause) {
        const refused = cause instanceof GatewayError;
        if (refused)
            sub.restart();
        this.call(() => sub.handlers.onReset?.(cause));
        if (!sub.active || this.subscriptions.get(sub.topic) !== sub)
            return;
        if (sub.options.snapshot || refused) {
            sub.restart();
            this.sendSubscribe(sub);
        }
    }
    failed(message) {
        const error = new GatewayError(message);
        const pending = message.id !== undefined ? this.pending.get(message.id) : undefined;
        if (message.id !== undefined)
            this.pending.delete(message.id);
        if (pending?.kind === "presence") {
            pending.reject(error);
            return;
        }
        const topic = pending?.kind === "subscribe" ? pending.topic : message.topic;
        const sub = topic !== undefined ? this.subscriptions.get(topic) : undefined;
        const aboutSubscription = sub !== undefined && (pending?.kind === "subscribe" || (pending === undefined && message.code === "FORBIDDEN"));
        if (!aboutSubscription) {
            this.emitError(error);
            return;
        }
        if (message.code === "INVALID_MESSAGE" && pending?.kind === "subscribe" && sub.resuming) {
            // The gateway refused the position itself: start over, as after `recovered: false`.
            this.reset(sub, error);
            return;
        }
        if (message.code === "RATE_LIMITED") {
            setTimeout(() => {
                if (sub.active && this.subscriptions.get(sub.topic) === sub && this.currentState === "open") {
                    this.sendSubscribe(sub);
                }
            }, RATE_LIMIT_RETRY_MS);
        }
        else {
            sub.active = false;
            this.subscriptions.delete(sub.topic);
        }
        this.call(() => (sub.handlers.onError ? sub.handlers.onError(error) : this.emitError(error)));
    }
    closed(code, reason) {
        this.detach();
        this.connectionEnded();
        if (this.currentState === "closed")
            return;
        const cannotCure = (code === UNAUTHORIZED || code === AUTH_TIMEOUT) && typeof this.options.token !== "function";
        if (cannotCure) {
            this.emitError(new ConnectionError(code, reason));
            this.clearTimers();
            this.setState("closed");
            return;
        }
        this.scheduleReconnect();
    }
    connectionEnded() {
        // A presence question the gateway will not answer now: the caller asks again.
        for (const [id, pending] of this.pending) {
            if (pending.kind === "presence") {
                this.pending.delete(id);
                pending.reject(new Error("the connection dropped before the presence answer"));
            }
        }
        if (this.openedAt > 0 && Date.now() - this.openedAt >= STABLE_MS)
            this.attempt = 0;
        this.openedAt = 0;
        clearTimeout(this.refreshTimer);
        clearInterval(this.heartbeatTimer);
        for (const sub of this.subscriptions.values())
            sub.awaiting = undefined;
    }
    /** Forgets the current socket (its late events are ignored) and closes it. */
    dropSocket(reason) {
        if (!this.socket)
            return;
        const socket = this.detach();
        this.connectionEnded();
        try {
            socket.close(CLIENT_DROP, reason);
        }
        catch {
            // Closing a socket that is still connecting throws in some implementations.
        }
    }
    detach() {
        const socket = this.socket;
        socket.onopen = socket.onmessage = socket.onclose = null;
        socket.onerror = () => { };
        this.socket = null;
        return socket;
    }
    scheduleReconnect(delay) {
        if (this.currentState === "closed")
            return;
        clearTimeout(this.reconnectTimer);
        const wait = delay ?? backoffDelay(this.attempt++, this.minDelayMs, this.maxDelayMs);
        this.setState(this.everOpened ? "reconnecting" : "connecting");
        this.reconnectTimer = setTimeout(() => void this.connect(), wait);
    }
    scheduleRefresh() {
        clearTimeout(this.refreshTimer);
        const source = this.options.token;
        if (typeof source !== "function" || this.token === undefined)
            return;
        const expiry = tokenExpiry(this.token);
        if (expiry === undefined)
            return;
        const remaining = expiry - Date.now();
        const margin = Math.min(this.refreshMarginMs, remaining / 2);
        this.refreshTimer = setTimeout(() => void this.refresh(source), Math.max(0, remaining - margin));
    }
    async refresh(source) {
        const socket = this.socket;
        let token;
        try {
            token = await source();
        }
        catch (e) {
            this.emitError(e instanceof Error ? e : new Error(String(e)));
            this.refreshTimer = setTimeout(() => void this.refresh(source), RATE_LIMIT_RETRY_MS);
            return;
        }
        if (this.socket !== socket || this.currentState !== "open")
            return;
        this.token = token;
        this.send({ action: "auth", token, id: this.request({ kind: "auth" }) });
    }
    heartbeat() {
        const silent = Date.now() - this.lastReceived;
        if (silent >= 2 * this.heartbeatMs) {
            this.dropSocket("no message from the gateway");
            this.scheduleReconnect();
        }
        else if (silent >= this.heartbeatMs) {
            this.send({ action: "ping" });
        }
    }
    request(pending) {
        const id = this.nextId++;
        this.pending.set(id, pending);
        return id;
    }
    send(message) {
        if (this.socket && this.socket.readyState === OPEN)
            this.socket.send(JSON.stringify(message));
    }
    setState(state) {
        if (state === this.currentState)
            return;
        this.currentState = state;
        for (const listener of this.listeners.state)
            this.call(() => listener(state));
    }
    clearTimers() {
        clearTimeout(this.reconnectTimer);
        clearTimeout(this.refreshTimer);
        clearInterval(this.heartbeatTimer);
    }
    emitError(error) {
        if (this.listeners.error.size === 0) {
            console.error(error);
            return;
        }
        for (const listener of this.listeners.error)
            listener(error);
    }
    /** Runs an application callback; what it throws is reported, never breaks the client. */
    call(callback) {
        try {
            callback();
        }
        catch (e) {
            this.emitError(e instanceof Error ? e : new Error(String(e)));
        }
    }
}
/** Opens an SSE stream (`/sse`) that resumes after every drop with nothing missed: each
 * reconnect is a new EventSource with a fresh token and the last event id as `since` (the
 * browser's own reconnect would reuse the first URL, expired token included, get 401 and stop).
 * A refused stream is retried when a retry can cure it (401 with a token function, 429, 503)
 * and ends with `onError` otherwise (400, 403). Error values never carry the URL. */
export function openEventStream(url, options) {
    return new EventStreamState(url, options);
}
const EVENT_SOURCE_CLOSED = 2;
class EventStreamState {
    url;
    options;
    state = "connecting";
    lastEventId = "";
    topics;
    EventSourceImpl;
    source = null;
    attempt = 0;
    everOpened = false;
    timer;
    /** The open stream is a snapshot whose topics have not all said `synced` yet. */
    unsynced = 0;
    /** The id of the last event while the snapshot is still arriving: kept once it is whole. */
    snapshotEventId = "";
    snapshotRows = 0;
    constructor(url, options) {
        this.url = url;
        this.options = options;
        this.topics = typeof options.topics === "string" ? [options.topics] : options.topics;
        const impl = options.EventSource ?? globalThis.EventSource;
        if (!impl)
            throw new TypeError("no EventSource implementation: pass one as options.EventSource");
        this.EventSourceImpl = impl;
        void this.open();
    }
    reconnect(delayMs = 0) {
        if (this.state === "closed")
            return;
        this.drop();
        this.schedule(delayMs);
    }
    close() {
        if (this.state === "closed")
            return;
        clearTimeout(this.timer);
        this.drop();
        this.setState("closed");
    }
    async open() {
        const source = this.options.token;
        let token;
        try {
            token = typeof source === "function" ? await source() : source;
        }
        catch (e) {
            this.report(e instanceof Error ? e : new Error(String(e)));
            this.schedule();
            return;
        }
        if (this.state === "closed" || this.source)
            return;
        const params = new URLSearchParams();
        for (const topic of this.topics)
            params.append("topic", topic);
        if (this.options.filters)
            params.set("filters", JSON.stringify(this.options.filters));
        const resuming = this.lastEventId !== "";
        if (resuming)
            params.set("since", this.lastEventId);
        else if (this.options.snapshot)
            params.set("snapshot", "1");
        if (token !== undefined)
            params.set("token", token);
        const target = `${this.url}${this.url.includes("?") ? "&" : "?"}${params}`;
        const es = new this.EventSourceImpl(target);
        this.source = es;
        this.unsynced = !resuming && this.options.snapshot ? this.topics.length : 0;
        this.snapshotEventId = "";
        this.snapshotRows = 0;
        let opened = false;
        let reset = false;
        es.onopen = () => {
            opened = true;
            this.everOpened = true;
            this.setState("open");
        };
        es.addEventListener("error", (event) => {
            if (this.source !== es)
                return;
            if (typeof event.data === "string") {
                // The gateway's `error` event: a message about the stream, which goes on.
                this.report(new GatewayError(JSON.parse(event.data)));
                return;
            }
            // The stream failed or ended (a drop, the token's expiry, a refusal): never let the
            // EventSource reconnect by itself with this URL.
            const refused = !opened && es.readyState === EVENT_SOURCE_CLOSED;
            this.drop();
            if (refused)
                void this.refused(target, typeof source === "function");
            else
                this.schedule();
        });
        es.addEventListener("ack", (event) => {
            const ack = JSON.parse(event.data);
            this.call(() => this.options.onAck?.(ack));
            // One reset for the stream, however many of its topics could not resume.
            if (resuming && ack.recovered === false && !reset) {
                reset = true;
                this.restart(ack);
            }
        });
        es.addEventListener("synced", (event) => {
            const message = JSON.parse(event.data);
            if (this.unsynced > 0 && --this.unsynced === 0 && this.snapshotEventId)
                this.lastEventId = this.snapshotEventId;
            this.call(() => this.options.onSynced?.(message));
        });
        es.addEventListener("reset", (event) => this.restart(JSON.parse(event.data)));
        es.addEventListener("data", (event) => {
            if (this.source !== es)
                return;
            const message = JSON.parse(event.data);
            const id = event.lastEventId ?? "";
            if (this.unsynced > 0) {
                // The snapshot's rows carry the ack's position: a resume from it would skip the rows
                // still to come.
                if (message.snapshot)
                    this.snapshotRows += 1;
                if (id)
                    this.snapshotEventId = id;
            }
            else if (id) {
                this.lastEventId = id;
            }
            this.call(() => this.options.onEvent(message));
        });
    }
    /** The stream cannot go on from its position: the application drops its state, and a
     * snapshot stream opens again with a fresh snapshot. */
    restart(cause) {
        this.call(() => this.options.onReset?.(cause));
        if (this.state === "closed" || !this.options.snapshot)
            return;
        this.lastEventId = "";
        this.unsynced = 0;
        this.drop();
        this.schedule(0);
    }
    /** EventSource does not say why a stream was refused; one plain request does. */
    async refused(target, freshToken) {
        const doFetch = this.options.fetch ?? globalThis.fetch;
        let status = 0;
        let body;
        if (doFetch) {
            const abort = new AbortController();
            try {
                const response = await doFetch(target, { signal: abort.signal, headers: { accept: "text/event-stream" } });
                status = response.status;
                if (!response.ok) {
                    const json = (await response.json());
                    if (json.code)
                        body = { type: "error", code: json.code, message: json.message ?? "" };
                }
            }
            catch {
                // Unreachable: retried below like any drop.
            }
            finally {
                abort.abort();
            }
        }
        if (this.state === "closed")
            return;
        const curable = status === 0 || status === 200 || status === 429 || status >= 500 || (status === 401 && freshToken);
        if (curable) {
            this.schedule();
            return;
        }
        const error = body ? new GatewayError(body) : new Error(`the gateway refused the stream: HTTP ${status}`);
        this.setState("closed");
        this.call(() => (this.options.onError ? this.options.onError(error) : this.report(error)));
    }
    drop() {
        const es = this.source;
        if (!es)
            return;
        this.source = null;
        es.onopen = null;
        es.close();
        if (this.unsynced > 0 && this.snapshotRows > 0) {
            const rows = this.snapshotRows;
            const topic = this.topics.join(",");
            this.unsynced = 0;
            this.snapshotRows = 0;
            // The next stream takes the snapshot again (lastEventId was not raised): the
            // application drops the rows it holds first.
            this.call(() => this.options.onReset?.(new SnapshotInterrupted(topic, rows)));
        }
    }
    schedule(delay) {
        if (this.state === "closed")
            return;
        clearTimeout(this.timer);
        const wait = delay ?? backoffDelay(this.attempt++, this.options.reconnect?.minDelayMs ?? 500, this.options.reconnect?.maxDelayMs ?? 30_000);
        this.setState(this.everOpened ? "reconnecting" : "connecting");
        this.timer = setTimeout(() => void this.open(), wait);
    }
    setState(state) {
        if (state === this.state)
            return;
        this.state = state;
        if (state === "open")
            this.attempt = 0;
        this.call(() => this.options.onState?.(state));
    }
    report(error) {
        if (this.options.onError)
            this.options.onError(error);
        else
            console.error(error);
    }
    call(callback) {
        try {
            callback();
        }
        catch (e) {
            console.error(e);
        }
    }
}

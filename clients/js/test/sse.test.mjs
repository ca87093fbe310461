// The SSE helper against a scripted EventSource: a fresh token and the kept position on every
// reconnect (never the browser's own reconnect with the first URL), a snapshot cut by a drop
// taken again, refusals read with one request: retried when a retry cures them, else an error.
import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";

import { GatewayError, openEventStream, SnapshotInterrupted } from "../dist/index.js";

const settle = () => new Promise((resolve) => setImmediate(resolve));

class FakeEventSource {
  static instances = [];
  readyState = 0;
  onopen = null;
  listeners = new Map();
  closed = false;
  constructor(url) {
    this.url = new URL(url);
    FakeEventSource.instances.push(this);
  }
  static last() {
    return FakeEventSource.instances.at(-1);
  }
  addEventListener(type, listener) {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }
  close() {
    this.closed = true;
    this.readyState = 2;
  }
  // Test side; a closed EventSource dispatches nothing, as in browsers.
  emit(type, event) {
    if (!this.closed) for (const listener of this.listeners.get(type) ?? []) listener(event);
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  send(type, message, lastEventId) {
    this.emit(type, { data: JSON.stringify(message), lastEventId: lastEventId ?? "" });
  }
  /** The stream ended (a drop, or the gateway ended it at the token's expiry). */
  drop() {
    this.readyState = 0;
    this.emit("error", {});
  }
  /** The gateway refused the request (a non-200 answer). */
  refuse() {
    this.readyState = 2;
    this.emit("error", {});
  }
}

const row = (offset, id, snapshot) => ({
  type: "data", topic: "cdc.order", source: "cdc.events", partition: 0, offset, timestamp: "2026-11-29T10:00:00Z",
  payload: { entity_type: "order", entity_id: id, operation: "update", data: { id }, before: null, timestamp: "2026-11-29T10:00:00Z" },
  ...(snapshot ? { snapshot: true } : {}),
});
const ackOf = (position, extra = {}) => ({ type: "ack", action: "subscribe", topic: "cdc.order", position, ...extra });

beforeEach(() => {
  FakeEventSource.instances = [];
  mock.timers.enable({ apis: ["setTimeout"] });
});
afterEach(() => mock.timers.reset());

test("every reconnect is a new EventSource with a fresh token and the last event id as since", async () => {
  let issued = 0;
  const seen = [];
  const states = [];
  const stream = openEventStream("http://gw.test/sse", {
    topics: "cdc.order",
    filters: { "row.tenant": "acme" },
    token: async () => `token-${++issued}`,
    EventSource: FakeEventSource,
    reconnect: { minDelayMs: 10, maxDelayMs: 10 },
    onEvent: (m) => seen.push(m.offset),
    onState: (s) => states.push(s),
  });
  await settle();
  let es = FakeEventSource.last();
  assert.equal(es.url.searchParams.get("token"), "token-1");
  assert.deepEqual(es.url.searchParams.getAll("topic"), ["cdc.order"]);
  assert.equal(es.url.searchParams.get("filters"), '{"row.tenant":"acme"}');
  assert.equal(es.url.searchParams.get("since"), null);
  es.open();
  es.send("ack", ackOf({ "cdc.events:0": 4 }));
  es.send("data", row(5, "1"), "cdc.events:0:5");
  es.send("data", row(6, "2"), "cdc.events:0:6");
  // The gateway ends the stream at the token's expiry; the browser would retry the same URL.
  es.drop();
  assert.ok(es.closed, "the EventSource is closed before it can reconnect by itself");
  assert.equal(stream.state, "reconnecting");
  mock.timers.tick(10);
  await settle();
  assert.equal(FakeEventSource.instances.length, 2);
  es = FakeEventSource.last();
  assert.equal(es.url.searchParams.get("token"), "token-2", "a fresh token");
  assert.equal(es.url.searchParams.get("since"), "cdc.events:0:6", "the position kept");
  es.open();
  es.send("ack", ackOf({ "cdc.events:0": 9 }, { recovered: true }));
  es.send("data", row(7, "1"), "cdc.events:0:7");
  assert.deepEqual(seen, [5, 6, 7]);
  assert.equal(stream.lastEventId, "cdc.events:0:7");
  assert.deepEqual(states, ["open", "reconnecting", "open"]);
  stream.close();
  assert.ok(es.closed);
  assert.equal(stream.state, "closed");
});

test("a drop between snapshot rows resets and takes the snapshot again, not a resume from the rows' id", async () => {
  const causes = [];
  const stream = openEventStream("http://gw.test/sse", {
    topics: ["cdc.order"],
    snapshot: true,
    EventSource: FakeEventSource,
    reconnect: { minDelayMs: 1, maxDelayMs: 1 },
    onEvent: () => {},
    onReset: (cause) => causes.push(cause),
  });
  await settle();
  let es = FakeEventSource.last();
  assert.equal(es.url.searchParams.get("snapshot"), "1");
  es.open();
  es.send("ack", ackOf({ "cdc.events:0": 40 }, { snapshot: { rows: 3, complete: true } }));
  // The gateway's id on a snapshot row is the ack's position: past the rows still to come.
  es.send("data", row(10, "1", true), "cdc.events:0:40");
  assert.equal(stream.lastEventId, "");
  es.drop();
  assert.equal(causes.length, 1);
  assert.ok(causes[0] instanceof SnapshotInterrupted);
  mock.timers.tick(5);
  await settle();
  es = FakeEventSource.last();
  assert.equal(es.url.searchParams.get("since"), null);
  assert.equal(es.url.searchParams.get("snapshot"), "1");
  es.open();
  es.send("ack", ackOf({ "cdc.events:0": 41 }, { snapshot: { rows: 1, complete: true } }));
  es.send("data", row(20, "2", true), "cdc.events:0:41");
  es.send("synced", { type: "synced", topic: "cdc.order" });
  assert.equal(stream.lastEventId, "cdc.events:0:41", "kept once the snapshot is whole");
  es.drop();
  mock.timers.tick(5);
  await settle();
  assert.equal(FakeEventSource.last().url.searchParams.get("since"), "cdc.events:0:41");
  assert.equal(causes.length, 1);
  // recovered: false on a snapshot stream: onReset, and a fresh snapshot.
  es = FakeEventSource.last();
  es.open();
  es.send("ack", ackOf({ "cdc.events:0": 90 }, { recovered: false }));
  assert.equal(causes.length, 2);
  assert.equal(causes[1].recovered, false);
  mock.timers.tick(1);
  await settle();
  assert.equal(FakeEventSource.last().url.searchParams.get("snapshot"), "1");
  assert.equal(FakeEventSource.last().url.searchParams.get("since"), null);
  stream.close();
});

test("a refusal is read with one request: 401 retries with a fresh token, 400 ends the stream with its code", async () => {
  const answers = [];
  const fetch = async (url) => {
    const [status, body] = answers.shift();
    fetch.urls.push(String(url));
    return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
  };
  fetch.urls = [];
  let issued = 0;
  const errors = [];
  const stream = openEventStream("http://gw.test/sse", {
    topics: "cdc.order",
    filters: { status: "paid" },
    token: () => `token-${++issued}`,
    EventSource: FakeEventSource,
    fetch,
    reconnect: { minDelayMs: 1, maxDelayMs: 1 },
    onEvent: () => {},
    onError: (e) => errors.push(e),
  });
  await settle();
  answers.push([401, { code: "UNAUTHENTICATED", message: "token expired" }]);
  FakeEventSource.last().refuse();
  await settle();
  await settle();
  assert.deepEqual(errors, [], "an expired token is cured by a fresh one");
  mock.timers.tick(1);
  await settle();
  assert.equal(FakeEventSource.instances.length, 2);
  assert.equal(FakeEventSource.last().url.searchParams.get("token"), "token-2");
  answers.push([400, { code: "INVALID_FILTER", message: "unknown root `status`" }]);
  FakeEventSource.last().refuse();
  await settle();
  await settle();
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof GatewayError);
  assert.equal(errors[0].code, "INVALID_FILTER");
  assert.doesNotMatch(errors[0].message, /token/, "the error does not carry the URL or its token");
  assert.equal(stream.state, "closed");
  mock.timers.tick(60_000);
  await settle();
  assert.equal(FakeEventSource.instances.length, 2, "no retry of a request that cannot succeed");
  assert.equal(fetch.urls.length, 2);
});

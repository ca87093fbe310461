// The client's logic against a scripted socket: resume positions, duplicates, resets,
// snapshots, token refresh, heartbeats, errors. test/e2e.test.mjs does the same against the
// real gateway.
import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";

import { backoffDelay, createClient, GatewayError, SnapshotInterrupted, tokenExpiry } from "../dist/index.js";
import { FakeSocket } from "./fake-socket.mjs";

const URL = "ws://gateway.test/ws";
/** Lets promise callbacks (the client's async connect) run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

function data(offset, { partition = 0, source = "cdc.events", id = "1", snapshot, leave } = {}) {
  const message = {
    type: "data",
    topic: "cdc.order",
    payload: {
      entity_type: "order",
      entity_id: id,
      operation: "update",
      data: { id, n: offset },
      before: null,
      timestamp: "2026-11-29T10:00:00Z",
    },
    partition,
    offset,
    timestamp: "2026-11-29T10:00:00.001Z",
  };
  if (source !== undefined) message.source = source;
  if (snapshot) message.snapshot = true;
  if (leave) message.leave = true;
  return message;
}

function ack(topic, id, position, extra = {}) {
  return { type: "ack", action: "subscribe", topic, position, id, ...extra };
}

function jwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.signature`;
}

beforeEach(() => {
  FakeSocket.reset();
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
});
afterEach(() => mock.timers.reset());

async function openClient(options = {}) {
  const client = createClient(URL, { WebSocket: FakeSocket, ...options });
  await settle();
  return client;
}

test("subscribes once open, delivers each record once and keeps its position", async () => {
  const client = await openClient();
  const states = [];
  client.on("state", (s) => states.push(s));
  const seen = [];
  const sub = client.subscribe("cdc.order", { filters: { "row.tenant": "acme" } }, (m) => seen.push(m.offset));
  const socket = FakeSocket.last();
  assert.equal(socket.sent.length, 0, "nothing is sent before the socket opens");
  socket.open();
  const subscribe = socket.lastSent("subscribe");
  assert.deepEqual(subscribe.filters, { "row.tenant": "acme" });
  assert.equal(subscribe.since, undefined);
  socket.deliver(ack("cdc.order", subscribe.id, { "cdc.events:0": 4, "cdc.events:1": 9 }));
  for (const offset of [5, 6, 6, 4, 7]) socket.deliver(data(offset));
  socket.deliver(data(10, { partition: 1 }));
  socket.deliver(data(9, { partition: 1 }));
  assert.deepEqual(seen, [5, 6, 7, 10]);
  assert.equal(sub.duplicatesDropped, 3);
  assert.deepEqual(sub.position, { "cdc.events:0": 7, "cdc.events:1": 10 });
  assert.deepEqual(states, ["open"]);
  client.close();
  assert.equal(client.state, "closed");
  assert.equal(socket.closedWith.code, 1000);
});

test("after a drop it resubscribes with the kept position and takes the replay as new", async () => {
  const client = await openClient({ reconnect: { minDelayMs: 100, maxDelayMs: 1000 } });
  const seen = [];
  const resets = [];
  client.subscribe("cdc.order", {}, (m) => seen.push(m.offset), { onReset: (a) => resets.push(a) });
  let socket = FakeSocket.last();
  socket.open();
  socket.deliver(ack("cdc.order", socket.lastSent("subscribe").id, { "cdc.events:0": 1 }));
  socket.deliver(data(2));
  socket.serverClose(1001, "shutting down");
  assert.equal(client.state, "reconnecting");
  mock.timers.tick(1000);
  await settle();
  assert.equal(FakeSocket.instances.length, 2, "one reconnect within the first backoff ceiling");
  socket = FakeSocket.last();
  socket.open();
  const resubscribe = socket.lastSent("subscribe");
  assert.deepEqual(resubscribe.since, { "cdc.events:0": 2 });
  assert.equal(resubscribe.snapshot, undefined);
  // The ack's position is the gateway's live position: the replay below it is still new.
  socket.deliver(ack("cdc.order", resubscribe.id, { "cdc.events:0": 5 }, { recovered: true }));
  for (const offset of [2, 3, 4, 5, 6]) socket.deliver(data(offset));
  assert.deepEqual(seen, [2, 3, 4, 5, 6]);
  assert.equal(resets.length, 0);
  client.close();
});

test("recovered:false resets and takes a fresh snapshot, whose rows pass despite their offsets", async () => {
  const client = await openClient({ reconnect: { minDelayMs: 1, maxDelayMs: 1 } });
  const seen = [];
  const events = [];
  client.subscribe("cdc.order", { snapshot: true }, (m) => seen.push([m.offset, !!m.snapshot]), {
    onReset: () => events.push("reset"),
    onSynced: () => events.push("synced"),
  });
  let socket = FakeSocket.last();
  socket.open();
  let subscribe = socket.lastSent("subscribe");
  assert.equal(subscribe.snapshot, true);
  socket.deliver(ack("cdc.order", subscribe.id, { "cdc.events:0": 8 }, { snapshot: { rows: 1, complete: true } }));
  socket.deliver(data(3, { snapshot: true }));
  socket.deliver({ type: "synced", topic: "cdc.order" });
  socket.deliver(data(9));
  socket.serverClose(1006);
  mock.timers.tick(10);
  await settle();
  socket = FakeSocket.last();
  socket.open();
  subscribe = socket.lastSent("subscribe");
  assert.deepEqual(subscribe.since, { "cdc.events:0": 9 });
  assert.equal(subscribe.snapshot, undefined, "a resume does not ask for a snapshot");
  socket.deliver(ack("cdc.order", subscribe.id, { "cdc.events:0": 20 }, { recovered: false }));
  assert.deepEqual(events, ["synced", "reset"]);
  const again = socket.lastSent("subscribe");
  assert.notEqual(again.id, subscribe.id);
  assert.equal(again.snapshot, true);
  assert.equal(again.since, undefined);
  socket.deliver(data(21)); // of the subscription being replaced: the snapshot covers it
  socket.deliver(ack("cdc.order", again.id, { "cdc.events:0": 21 }, { snapshot: { rows: 1, complete: true } }));
  socket.deliver(data(12, { snapshot: true }));
  socket.deliver({ type: "synced", topic: "cdc.order" });
  socket.deliver(data(21));
  socket.deliver(data(22));
  assert.deepEqual(seen, [[3, true], [9, false], [12, true], [22, false]]);
  assert.deepEqual(events, ["synced", "reset", "synced"]);
  client.close();
});

test("a reconnect between snapshot rows takes the snapshot again: no position is kept before synced", async () => {
  const client = await openClient({ reconnect: { minDelayMs: 1, maxDelayMs: 1 } });
  const rows = new Map();
  const causes = [];
  const synced = [];
  const sub = client.subscribe("cdc.order", { snapshot: true }, (m) => rows.set(m.payload.entity_id, m.offset), {
    onReset: (cause) => {
      causes.push(cause);
      rows.clear();
    },
    onSynced: () => synced.push(new Map(rows)),
  });
  let socket = FakeSocket.last();
  socket.open();
  let subscribe = socket.lastSent("subscribe");
  assert.equal(subscribe.snapshot, true);
  // Three rows promised; one arrives, then the connection goes.
  socket.deliver(ack("cdc.order", subscribe.id, { "cdc.events:0": 40 }, { snapshot: { rows: 3, complete: true } }));
  socket.deliver(data(10, { id: "1", snapshot: true }));
  assert.deepEqual(sub.position, {}, "no position while snapshot rows are still to come");
  socket.serverClose(1006);
  mock.timers.tick(5);
  await settle();
  socket = FakeSocket.last();
  socket.open();
  subscribe = socket.lastSent("subscribe");
  assert.equal(subscribe.since, undefined, "a resume from the ack's position would skip rows 2 and 3");
  assert.equal(subscribe.snapshot, true, "the snapshot is taken again");
  assert.equal(causes.length, 1, "the partial table is dropped first");
  assert.ok(causes[0] instanceof SnapshotInterrupted);
  assert.equal(causes[0].topic, "cdc.order");
  assert.equal(causes[0].rowsReceived, 1);
  // Row 1 was deleted while the client was away: the fresh snapshot no longer has it.
  socket.deliver(ack("cdc.order", subscribe.id, { "cdc.events:0": 45 }, { snapshot: { rows: 2, complete: true } }));
  socket.deliver(data(20, { id: "2", snapshot: true }));
  socket.deliver(data(30, { id: "3", snapshot: true }));
  socket.deliver({ type: "synced", topic: "cdc.order" });
  assert.deepEqual(synced, [new Map([["2", 20], ["3", 30]])]);
  assert.deepEqual(sub.position, { "cdc.events:0": 45 }, "kept from the synced snapshot's ack");
  socket.deliver(data(45));
  socket.deliver(data(46, { id: "3" }));
  assert.equal(rows.get("3"), 46);
  assert.equal(sub.duplicatesDropped, 1);
  // Once synced, a reconnect resumes.
  socket.serverClose(1006);
  mock.timers.tick(5);
  await settle();
  socket = FakeSocket.last();
  socket.open();
  subscribe = socket.lastSent("subscribe");
  assert.deepEqual(subscribe.since, { "cdc.events:0": 46 });
  assert.equal(subscribe.snapshot, undefined);
  assert.equal(causes.length, 1);
  client.close();
});

test("a reconnect before any snapshot row, or before the ack, snapshots again without a reset", async () => {
  const client = await openClient({ reconnect: { minDelayMs: 1, maxDelayMs: 1 } });
  const causes = [];
  client.subscribe("cdc.order", { snapshot: true }, () => {}, { onReset: (c) => causes.push(c) });
  let socket = FakeSocket.last();
  socket.open();
  socket.serverClose(1006); // before the ack
  mock.timers.tick(5);
  await settle();
  socket = FakeSocket.last();
  socket.open();
  let subscribe = socket.lastSent("subscribe");
  assert.equal(subscribe.snapshot, true);
  socket.deliver(ack("cdc.order", subscribe.id, { "cdc.events:0": 4 }, { snapshot: { rows: 2, complete: true } }));
  socket.serverClose(1006); // after the ack, before any row
  mock.timers.tick(5);
  await settle();
  socket = FakeSocket.last();
  socket.open();
  subscribe = socket.lastSent("subscribe");
  assert.equal(subscribe.snapshot, true);
  assert.equal(subscribe.since, undefined);
  assert.deepEqual(causes, [], "nothing to drop: no row had arrived");
  client.close();
});

test("the synced of a replaced snapshot subscription is not taken for the new one's", async () => {
  const client = await openClient();
  const events = [];
  const sub = client.subscribe("cdc.order", { snapshot: true }, (m) => events.push(`row:${m.offset}`), {
    onSynced: () => events.push("synced"),
  });
  const socket = FakeSocket.last();
  socket.open();
  const first = socket.lastSent("subscribe");
  socket.deliver(ack("cdc.order", first.id, { "cdc.events:0": 8 }, { snapshot: { rows: 1, complete: true } }));
  socket.deliver(data(3, { snapshot: true }));
  socket.deliver({ type: "synced", topic: "cdc.order" });
  // A reset re-snapshots: what the old snapshot still had in flight is not the new one's.
  socket.deliver({ type: "reset", topic: "cdc.order", reason: "records_lost", source: "cdc.events", partition: 0, from: 9, to: 9 });
  const again = socket.lastSent("subscribe");
  assert.notEqual(again.id, first.id);
  socket.deliver({ type: "synced", topic: "cdc.order" });
  assert.deepEqual(sub.position, {});
  socket.deliver(ack("cdc.order", again.id, { "cdc.events:0": 12 }, { snapshot: { rows: 1, complete: true } }));
  socket.deliver(data(11, { snapshot: true }));
  socket.deliver({ type: "synced", topic: "cdc.order" });
  assert.deepEqual(events, ["row:3", "synced", "row:11", "synced"]);
  assert.deepEqual(sub.position, { "cdc.events:0": 12 });
  client.close();
});

test("a reset message (records lost) resets live subscriptions; a snapshot one takes a fresh snapshot", async () => {
  const client = await openClient();
  const causes = [];
  const seen = [];
  client.subscribe("cdc.order", { snapshot: true }, (m) => seen.push(m.offset), { onReset: (c) => causes.push(c) });
  client.subscribe("cdc.order.7", {}, (m) => seen.push(m.offset), { onReset: (c) => causes.push(c) });
  const socket = FakeSocket.last();
  socket.open();
  const [entity, row] = socket.sent.filter((m) => m.action === "subscribe");
  socket.deliver(ack("cdc.order", entity.id, { "cdc.events:0": 8 }, { snapshot: { rows: 0, complete: true } }));
  socket.deliver({ type: "synced", topic: "cdc.order" });
  socket.deliver(ack("cdc.order.7", row.id, { "cdc.events:0": 8 }));
  socket.deliver(data(9));
  const lost = (topic) => ({
    type: "reset", topic, reason: "records_lost", source: "cdc.events", partition: 0, from: 10, to: 19,
  });
  socket.deliver(lost("cdc.order"));
  socket.deliver(lost("cdc.order.7"));
  assert.deepEqual(causes, [lost("cdc.order"), lost("cdc.order.7")]);
  const again = socket.lastSent("subscribe");
  assert.equal(again.topic, "cdc.order");
  assert.equal(again.snapshot, true, "the snapshot subscription reloads its rows");
  assert.equal(again.since, undefined);
  assert.equal(
    socket.sent.filter((m) => m.action === "subscribe").length,
    3,
    "the row subscription goes on as it is",
  );
  client.close();
});

test("a resume the gateway refuses outright is a reset too: onReset, then a fresh subscribe", async () => {
  const client = await openClient({ reconnect: { minDelayMs: 1, maxDelayMs: 1 } });
  const causes = [];
  const sub = client.subscribe("cdc.order", {}, () => {}, { onReset: (cause) => causes.push(cause) });
  let socket = FakeSocket.last();
  socket.open();
  socket.deliver(ack("cdc.order", socket.lastSent("subscribe").id, { "cdc.events:0": 3 }));
  socket.serverClose(1001);
  mock.timers.tick(5);
  await settle();
  socket = FakeSocket.last();
  socket.open();
  const resume = socket.lastSent("subscribe");
  assert.deepEqual(resume.since, { "cdc.events:0": 3 });
  socket.deliver({ type: "error", code: "INVALID_MESSAGE", message: "unknown topic", id: resume.id, topic: "cdc.order" });
  assert.equal(causes.length, 1);
  assert.ok(causes[0] instanceof GatewayError);
  assert.equal(sub.active, true);
  const fresh = socket.lastSent("subscribe");
  assert.notEqual(fresh.id, resume.id);
  assert.equal(fresh.since, undefined);
  socket.deliver(ack("cdc.order", fresh.id, { "cdc.events:0": 9 }));
  assert.deepEqual(sub.position, { "cdc.events:0": 9 });
  client.close();
});

test("positions without source topics (bare partitions) work the same", async () => {
  const client = await openClient({ reconnect: { minDelayMs: 1, maxDelayMs: 1 } });
  const seen = [];
  const sub = client.subscribe("cdc.order", {}, (m) => seen.push(m.offset));
  let socket = FakeSocket.last();
  socket.open();
  socket.deliver(ack("cdc.order", socket.lastSent("subscribe").id, { 0: 1 }));
  socket.deliver(data(1, { source: undefined }));
  socket.deliver(data(2, { source: undefined }));
  socket.deliver(data(2, { source: "cdc.events" }));
  assert.deepEqual(seen, [2]);
  assert.deepEqual(sub.position, { 0: 2 });
  socket.serverClose(1001);
  mock.timers.tick(5);
  await settle();
  socket = FakeSocket.last();
  socket.open();
  assert.deepEqual(socket.lastSent("subscribe").since, { 0: 2 });
  client.close();
});

test("answers pings, and pings then reconnects a connection that went silent", async () => {
  const client = await openClient({ heartbeatMs: 1000, reconnect: { minDelayMs: 1, maxDelayMs: 1 } });
  const socket = FakeSocket.last();
  socket.open();
  socket.deliver({ type: "ping", timestamp: 1 });
  assert.deepEqual(socket.sent.at(-1), { action: "pong" });
  mock.timers.tick(1000);
  assert.equal(socket.sent.at(-1).action, "ping", "silence for heartbeatMs sends a ping");
  socket.deliver({ type: "pong", timestamp: 1 });
  mock.timers.tick(1000);
  assert.equal(socket.closedWith, undefined, "a pong keeps it");
  mock.timers.tick(2000);
  assert.equal(socket.closedWith?.code, 4000, "silence for twice heartbeatMs drops it");
  mock.timers.tick(5);
  await settle();
  assert.equal(FakeSocket.instances.length, 2);
  client.close();
});

test("a token function authenticates first and refreshes before exp", async () => {
  let issued = 0;
  const token = async () => {
    issued += 1;
    return jwt({ exp: Math.floor(Date.now() / 1000) + 60, n: issued });
  };
  const client = await openClient({ token, refreshMarginMs: 10_000, heartbeatMs: 0 });
  client.subscribe("cdc.order", {}, () => {});
  const socket = FakeSocket.last();
  socket.open();
  assert.deepEqual(socket.sent.map((m) => m.action), ["auth"], "nothing but auth before its ack");
  assert.equal(client.state, "connecting");
  socket.deliver({ type: "ack", action: "auth", id: socket.sent[0].id });
  assert.equal(client.state, "open");
  assert.equal(socket.sent.at(-1).action, "subscribe");
  mock.timers.tick(49_000);
  await settle();
  assert.equal(issued, 1);
  mock.timers.tick(1_000);
  await settle();
  assert.equal(issued, 2, "refreshed 10 s before exp");
  const auth = socket.lastSent("auth");
  assert.equal(JSON.parse(Buffer.from(auth.token.split(".")[1], "base64url")).n, 2);
  socket.deliver({ type: "ack", action: "auth", id: auth.id });
  mock.timers.tick(50_000);
  await settle();
  assert.equal(issued, 3, "and again before the fresh token's exp");
  client.close();
});

test("4001 with a fixed token ends the client with a ConnectionError", async () => {
  const client = await openClient({ token: jwt({ exp: 1 }) });
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const socket = FakeSocket.last();
  socket.open();
  socket.serverClose(4001, "token expired");
  assert.equal(client.state, "closed");
  assert.equal(errors[0].name, "ConnectionError");
  assert.equal(errors[0].closeCode, 4001);
  mock.timers.tick(60_000);
  await settle();
  assert.equal(FakeSocket.instances.length, 1, "no reconnect");
});

test("protocol errors arrive as typed values and end the subscription they concern", async () => {
  const client = await openClient();
  const socket = FakeSocket.last();
  socket.open();
  const failures = [];
  const bad = client.subscribe("cdc.order", { filters: { "data.amount": { gt: 1 } } }, () => {}, {
    onError: (e) => failures.push(e),
  });
  const id = socket.lastSent("subscribe").id;
  socket.deliver({ type: "error", code: "INVALID_FILTER", message: "nope", id, topic: "cdc.order" });
  assert.ok(failures[0] instanceof GatewayError);
  assert.equal(failures[0].code, "INVALID_FILTER");
  assert.equal(failures[0].requestId, id);
  assert.equal(bad.active, false);
  const kept = client.subscribe("cdc.customer", {}, () => {}, { onError: (e) => failures.push(e) });
  socket.deliver(ack("cdc.customer", socket.lastSent("subscribe").id, {}));
  socket.deliver({ type: "error", code: "FORBIDDEN", message: "revoked", topic: "cdc.customer" });
  assert.equal(failures[1].code, "FORBIDDEN");
  assert.equal(kept.active, false, "a revoked subscription ends");
  const errors = [];
  client.on("error", (e) => errors.push(e));
  socket.deliver({ type: "error", code: "UNKNOWN_ACTION", message: "what", id: 999 });
  assert.equal(errors[0].code, "UNKNOWN_ACTION");
  client.close();
});

test("a subscription rate limited is retried, an unsubscribed topic's data is ignored", async () => {
  const client = await openClient();
  const socket = FakeSocket.last();
  socket.open();
  const seen = [];
  const sub = client.subscribe("cdc.order", {}, (m) => seen.push(m.offset), { onError: () => {} });
  socket.deliver({ type: "error", code: "RATE_LIMITED", message: "slow down", id: socket.lastSent("subscribe").id });
  assert.equal(sub.active, true);
  mock.timers.tick(1000);
  const retry = socket.lastSent("subscribe");
  assert.equal(socket.sent.filter((m) => m.action === "subscribe").length, 2);
  socket.deliver(ack("cdc.order", retry.id, { "cdc.events:0": 0 }));
  socket.deliver(data(1));
  sub.unsubscribe();
  assert.equal(socket.sent.at(-1).action, "unsubscribe");
  socket.deliver(data(2));
  assert.deepEqual(seen, [1]);
  // Subscribed again with other filters: what the old subscription still had in flight
  // before the new ack is not the new one's.
  const again = [];
  client.subscribe("cdc.order", { filters: { "row.tenant": "acme" } }, (m) => again.push(m.offset));
  const resubscribe = socket.lastSent("subscribe");
  socket.deliver(data(3));
  socket.deliver(ack("cdc.order", resubscribe.id, { "cdc.events:0": 3 }));
  socket.deliver(data(4));
  assert.deepEqual(again, [4]);
  assert.throws(() => client.subscribe("cdc.customer", {}, () => {}) && client.subscribe("cdc.customer", {}, () => {}));
  client.close();
});

test("backoff is full jitter under a cap", () => {
  assert.equal(backoffDelay(0, 500, 30_000, () => 0.999), 499);
  assert.equal(backoffDelay(3, 500, 30_000, () => 0.5), 2000);
  assert.equal(backoffDelay(20, 500, 30_000, () => 0.999), 29_970);
  assert.equal(backoffDelay(1000, 500, 30_000, () => 0), 0);
});

test("tokenExpiry reads exp from a JWT payload", () => {
  assert.equal(tokenExpiry(jwt({ exp: 1_800_000_000, sub: "ü" })), 1_800_000_000_000);
  assert.equal(tokenExpiry(jwt({ sub: "x" })), undefined);
  assert.equal(tokenExpiry("not a token"), undefined);
});

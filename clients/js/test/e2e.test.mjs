// The client against the real gateway binary and a tansu broker: a gateway restart in the
// middle of production (every record arrives exactly once, counted by source topic,
// partition and offset against what the broker acknowledged), token refresh on a live
// connection, and the reset path when the gateway cannot resume. Every frame the gateway sends
// is checked against schemas/server-message.schema.json.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { createClient } from "../dist/index.js";
import { validator } from "./schemas.mjs";
import { Gateway, orderChange, recordingWebSocket, signJwt, startTansu, until } from "./support.mjs";

const validServerMessage = validator("server-message.schema.json");
let tansu;

before(async () => {
  tansu = await startTansu();
});
after(() => tansu?.stop());

function assertSchema(frames) {
  for (const frame of frames) {
    assert.ok(validServerMessage(frame), `${JSON.stringify(frame)}: ${JSON.stringify(validServerMessage.errors)}`);
  }
}

const key = (source, partition, offset) => `${source}:${partition}:${offset}`;

test("a gateway restart (SIGTERM, same port) during production: every record arrives exactly once", { timeout: 120_000 }, async (t) => {
  const topic = `cdc-events-restart-${process.pid}`;
  await tansu.createTopic(topic, 3);
  const gateway = await Gateway.start(tansu.brokers, topic);
  t.after(() => gateway.terminate());
  const producer = await tansu.producer();
  t.after(() => producer.disconnect());
  const frames = [];
  const client = createClient(gateway.url, {
    WebSocket: recordingWebSocket(frames),
    reconnect: { minDelayMs: 100, maxDelayMs: 1000 },
  });
  t.after(() => client.close());
  const states = [];
  client.on("state", (s) => states.push(s));
  const received = new Map();
  const acks = [];
  const resets = [];
  client.subscribe("cdc.order", {}, (m) => {
    const k = key(m.source ?? topic, m.partition, m.offset);
    received.set(k, (received.get(k) ?? 0) + 1);
  }, {
    onAck: (a) => acks.push(a),
    onReset: (cause) => resets.push(cause instanceof Error ? cause.message : JSON.stringify(cause)),
  });
  await until(() => acks.length === 1, "the first ack");

  // Records before, during and after the restart; the broker's acknowledgements are the
  // independent account of what exists.
  const produced = new Set();
  const total = 300;
  let restart;
  for (let n = 0; n < total; n++) {
    const { partition, offset } = await producer.send(topic, String(n % 40), orderChange(n % 40, n));
    produced.add(key(topic, partition, offset));
    if (n === 100) {
      restart = (async () => {
        assert.equal(await gateway.terminate(), 0, "a clean drain exits 0");
        await gateway.restart();
      })();
    }
    await sleep(5);
  }
  await restart;
  assert.equal(new Set([...produced].map((k) => k.split(":")[1])).size, 3, "records went to every partition");
  // Whatever arrives by then; the assertions below say what is missing or repeated, and why.
  await until(() => received.size >= produced.size, "every record", 30_000).catch(() => {});
  await sleep(500); // anything late would be a repeat or a stray

  assert.deepEqual(resets, [], "the restarted gateway resumed the subscription");
  const repeated = [...received].filter(([, count]) => count > 1);
  assert.deepEqual(repeated, [], "no record delivered twice");
  assert.deepEqual([...received.keys()].filter((k) => !produced.has(k)), [], "nothing that was not produced");
  assert.deepEqual([...produced].filter((k) => !received.has(k)), [], "nothing missed");
  assert.ok(states.includes("reconnecting"), `the client reconnected: ${states}`);
  assert.equal(acks.at(-1).recovered, true);
  assertSchema(frames);
});

test("a token function keeps a connection alive past many expiries; a fixed token ends at exp", { timeout: 120_000 }, async (t) => {
  const topic = `cdc-events-auth-${process.pid}`;
  await tansu.createTopic(topic, 1);
  const secret = "client-tests-secret";
  const gateway = await Gateway.start(tansu.brokers, topic, ["--auth", "jwt", "--jwt-secret", secret, "--jwt-leeway", "0s"]);
  t.after(() => gateway.terminate());
  const producer = await tansu.producer();
  t.after(() => producer.disconnect());
  const lifetime = 3;
  const issue = (topics = ["cdc.*"]) => signJwt(secret, { exp: Math.floor(Date.now() / 1000) + lifetime, topics });

  let issued = 0;
  const frames = [];
  const sockets = [];
  const refreshing = createClient(gateway.url, {
    WebSocket: recordingWebSocket(frames, sockets),
    token: async () => {
      issued += 1;
      return issue();
    },
  });
  t.after(() => refreshing.close());
  const errors = [];
  refreshing.on("error", (e) => errors.push(e));
  const fixed = createClient(gateway.url, { WebSocket: recordingWebSocket([]), token: issue() });
  t.after(() => fixed.close());
  const fixedErrors = [];
  fixed.on("error", (e) => fixedErrors.push(e));

  const seen = [];
  const acks = [];
  refreshing.subscribe("cdc.order", {}, (m) => seen.push(m.offset), { onAck: (a) => acks.push(a) });
  fixed.subscribe("cdc.order", {}, () => {});
  await until(() => acks.length === 1, "the subscribe ack");

  // Three token lifetimes with records flowing.
  const offsets = [];
  const end = Date.now() + 3 * lifetime * 1000;
  for (let n = 0; Date.now() < end; n++) {
    offsets.push((await producer.send(topic, "1", orderChange(1, n))).offset);
    await sleep(100);
  }
  await until(() => seen.length >= offsets.length, "every record on the refreshed connection");
  assert.deepEqual(seen, offsets);
  assert.equal(sockets.length, 1, "one connection throughout: no reconnect");
  assert.equal(refreshing.state, "open");
  assert.ok(issued >= 4, `a fresh token before every expiry (issued ${issued})`);
  assert.deepEqual(errors, []);
  assert.equal(fixed.state, "closed", "the fixed token's connection ended at exp");
  assert.equal(fixedErrors[0]?.closeCode, 4001);
  assertSchema(frames);
});

test("a resume the gateway cannot serve calls onReset and takes a fresh snapshot", { timeout: 120_000 }, async (t) => {
  const topic = `cdc-events-reset-${process.pid}`;
  await tansu.createTopic(topic, 1);
  // No history: every resume answers recovered: false.
  const gateway = await Gateway.start(tansu.brokers, topic, ["--history-events", "0"]);
  t.after(() => gateway.terminate());
  const producer = await tansu.producer();
  t.after(() => producer.disconnect());
  const frames = [];
  const client = createClient(gateway.url, { WebSocket: recordingWebSocket(frames) });
  t.after(() => client.close());
  const rows = new Map();
  const log = [];
  client.subscribe("cdc.order", { snapshot: true }, (m) => {
    log.push(m.snapshot ? "snapshot" : "live");
    if (m.payload.operation === "delete" || m.leave) rows.delete(m.payload.entity_id);
    else rows.set(m.payload.entity_id, m.payload.data.n);
  }, {
    onReset: (ack) => {
      log.push(`reset:${ack.recovered}`);
      rows.clear();
    },
    onSynced: () => log.push("synced"),
  });
  await until(() => log.includes("synced"), "the first (empty) snapshot is synced");
  for (let n = 0; n < 10; n++) await producer.send(topic, String(n % 3), orderChange(n % 3, n));
  await until(() => log.filter((e) => e === "live").length === 10, "10 live events");
  assert.deepEqual(Object.fromEntries(rows), { 0: 9, 1: 7, 2: 8 });

  log.length = 0;
  client.reconnect();
  await until(() => log.filter((e) => e === "synced").length === 1, "a fresh snapshot after the reset");
  assert.deepEqual(log, ["reset:false", "snapshot", "snapshot", "snapshot", "synced"]);
  assert.deepEqual(Object.fromEntries(rows), { 0: 9, 1: 7, 2: 8 }, "the table rebuilt from the snapshot");
  assertSchema(frames);
});

test("a reconnect between snapshot rows: the table is rebuilt whole, changes made meanwhile included", { timeout: 120_000 }, async (t) => {
  const topic = `cdc-events-snapshot-cut-${process.pid}`;
  await tansu.createTopic(topic, 3);
  const gateway = await Gateway.start(tansu.brokers, topic);
  t.after(() => gateway.terminate());
  const producer = await tansu.producer();
  t.after(() => producer.disconnect());

  // The independent account: what the broker acknowledged, folded to the table it makes.
  const truth = new Map();
  const produce = async (id, n, operation = "update") => {
    await producer.send(topic, String(id), orderChange(id, n, operation));
    if (operation === "delete") truth.delete(String(id));
    else truth.set(String(id), n);
  };
  const watcher = createClient(gateway.url, { WebSocket: recordingWebSocket([]) });
  t.after(() => watcher.close());
  let dispatched = 0;
  const watcherAcks = [];
  watcher.subscribe("cdc.order", {}, () => (dispatched += 1), { onAck: (a) => watcherAcks.push(a) });
  await until(() => watcherAcks.length === 1, "the watcher's ack");
  const rowsCount = 60;
  for (let id = 0; id < rowsCount; id++) await produce(id, id);
  await until(() => dispatched === rowsCount, "the gateway dispatched every row");

  const frames = [];
  const client = createClient(gateway.url, { WebSocket: recordingWebSocket(frames), reconnect: { minDelayMs: 50, maxDelayMs: 200 } });
  t.after(() => client.close());
  const table = new Map();
  const log = [];
  let cutAfter = 5;
  const firstRows = [];
  let offline;
  let positionAtCut;
  const sub = client.subscribe("cdc.order", { snapshot: true }, (m) => {
    const { entity_id: id, operation, data } = m.payload;
    if (operation === "delete" || m.leave || data === null) table.delete(id);
    else table.set(id, data.n);
    if (m.snapshot && cutAfter > 0) {
      firstRows.push(id);
      if (--cutAfter === 0) {
        log.push("cut");
        positionAtCut = sub.position;
        // Away for a while, and the table changes meanwhile: rows the client already holds,
        // and rows it has not received yet.
        offline = (async () => {
          await produce(firstRows[0], 1000, "delete");
          await produce(firstRows[1], 1001);
          const unseen = [...truth.keys()].filter((k) => !firstRows.includes(k));
          await produce(unseen[0], 1002, "delete");
          await produce(unseen[1], 1003);
          await until(() => dispatched === rowsCount + 4, "the offline changes are dispatched");
        })();
        client.reconnect(1500);
      }
    }
  }, {
    onReset: (cause) => {
      log.push(`reset:${cause.name ?? cause.type}`);
      table.clear();
    },
    onSynced: () => log.push("synced"),
  });
  // The old client resumed instead (recovered: true, no second synced): wait for either.
  await until(() => log.includes("synced") || frames.some((f) => f.type === "ack" && f.recovered === true), "the snapshot is synced or resumed", 30_000);
  await offline;
  await sleep(300); // a resume would have sent the offline changes by now
  assert.deepEqual(new Map([...table].sort()), new Map([...truth].sort()), "the table equals the broker's account");
  assert.deepEqual(log, ["cut", "reset:SnapshotInterrupted", "synced"]);
  assert.deepEqual(positionAtCut, {}, "no position is kept in the middle of a snapshot");
  // Live from there, and a resume after the snapshot is complete.
  await produce(7, 2000);
  await until(() => table.get("7") === 2000, "a live change");
  client.reconnect(200);
  await produce(8, 2001, "delete");
  await until(() => !table.has("8"), "a change made while away arrives by the resume");
  assert.deepEqual(new Map([...table].sort()), new Map([...truth].sort()));
  assert.deepEqual(log, ["cut", "reset:SnapshotInterrupted", "synced"], "the later reconnect resumed");
  assertSchema(frames);
});

test("presence: asked, and watched as people come and go, named by their tokens' sub", { timeout: 120_000 }, async (t) => {
  const topic = `cdc-events-presence-${process.pid}`;
  await tansu.createTopic(topic, 1);
  const secret = "presence-tests-secret";
  const gateway = await Gateway.start(tansu.brokers, topic, [
    "--auth", "jwt", "--jwt-secret", secret, "--presence-interval", "1s",
  ]);
  t.after(() => gateway.terminate());
  const as = (sub, topics = ["cdc.order"]) =>
    signJwt(secret, { sub, exp: Math.floor(Date.now() / 1000) + 600, topics });
  const frames = [];
  const alice = createClient(gateway.url, { WebSocket: recordingWebSocket(frames), token: as("alice") });
  t.after(() => alice.close());
  const changes = [];
  alice.subscribe("cdc.order", { presence: true }, () => {}, { onPresence: (m) => changes.push(m) });
  await until(() => changes.some((m) => m.subscribers === 1), "alice sees herself");
  const bob = createClient(gateway.url, { WebSocket: recordingWebSocket([]), token: as("bob") });
  const bobSub = bob.subscribe("cdc.order", {}, () => {});
  await until(() => changes.some((m) => m.subscribers === 2), "bob joins");
  const joined = changes.find((m) => m.subscribers === 2);
  assert.deepEqual(joined.users, ["alice", "bob"]);
  assert.deepEqual(joined.joins, ["bob"]);
  const asked = await alice.presence("cdc.order");
  assert.deepEqual([asked.subscribers, asked.users], [2, ["alice", "bob"]]);
  bobSub.unsubscribe();
  bob.close();
  await until(() => changes.at(-1).subscribers === 1, "bob leaves");
  assert.deepEqual(changes.at(-1).leaves, ["bob"]);
  // A token that may not read the topic is refused its presence.
  const carol = createClient(gateway.url, { WebSocket: recordingWebSocket([]), token: as("carol", ["cdc.customer"]) });
  t.after(() => carol.close());
  await until(() => carol.state === "open", "carol connects");
  await assert.rejects(carol.presence("cdc.order"), (e) => e.code === "FORBIDDEN");
  assertSchema(frames);
});

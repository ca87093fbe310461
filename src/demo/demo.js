// The demo page: a live table of the current `cdc.order` rows drawn from cdc-gateway-client
// (snapshot, then changes in place), and the same table read from /sse with the client's
// EventSource helper. Served by `cdc-gateway demo` next to /client.js, the client's built module.
import { createClient, openEventStream } from "/client.js";

const TOPIC = "cdc.order";
const OFFLINE_MS = 2000;
const $ = (id) => document.getElementById(id);

/** The current rows of one entity, keyed by id, as table rows. */
class RowTable {
  /**
   * @param {HTMLElement} body the tbody
   * @param {HTMLElement} count where the row count goes
   * @param {(row: object, message: object) => string[]} cells
   * @param {boolean} guard apply an event only when it is newer than the last one applied to
   *   its row (the SSE panel needs it: a stream resumed with a snapshot sends the snapshot
   *   rows before the replayed events, which may be older)
   */
  constructor(body, count, cells, guard) {
    this.body = body;
    this.count = count;
    this.cells = cells;
    this.guard = guard;
    this.rows = new Map();
    this.applied = new Map();
  }

  apply(message) {
    const event = message.payload;
    if (event.operation === "truncate") return this.clear();
    const id = event.entity_id;
    if (this.guard) {
      const last = this.applied.get(id);
      const at = { key: `${message.source ?? ""}:${message.partition}`, offset: message.offset };
      if (last && last.key === at.key && last.offset >= at.offset) return;
      this.applied.set(id, at);
    }
    if (event.operation === "delete" || message.leave || event.data === null) {
      this.rows.get(id)?.tr.remove();
      this.rows.delete(id);
    } else {
      let entry = this.rows.get(id);
      if (!entry) {
        const tr = document.createElement("tr");
        tr.dataset.id = id;
        entry = { tr, data: null };
        this.rows.set(id, entry);
        this.insertSorted(tr);
      } else if (!message.snapshot) {
        entry.tr.classList.remove("changed");
        void entry.tr.offsetWidth; // restarts the highlight
        entry.tr.classList.add("changed");
      }
      entry.data = event.data;
      entry.tr.dataset.position = `${message.partition}:${message.offset}`;
      entry.tr.replaceChildren(
        ...this.cells(event.data, message).map((text, i) => {
          const td = document.createElement("td");
          td.textContent = text;
          if (i === 1) td.className = `status-${text}`;
          return td;
        }),
      );
    }
    this.count.textContent = String(this.rows.size);
  }

  /** Newest order first, by id, so that both panels list the rows alike. */
  insertSorted(tr) {
    const key = (row) => Number(row.dataset.id) || 0;
    const next = [...this.body.children].find((other) => key(other) < key(tr));
    this.body.insertBefore(tr, next ?? null);
  }

  clear() {
    this.rows.clear();
    this.applied.clear();
    this.body.replaceChildren();
    this.count.textContent = "0";
  }

  /** id -> what the table shows of the row, for comparing tables. */
  contents() {
    const out = new Map();
    for (const [id, { data }] of this.rows) out.set(id, JSON.stringify([data.status, data.amount, data.tenant]));
    return out;
  }
}

function showState(element, state) {
  $(element).dataset.state = state;
  $(`${element}-text`).textContent = state;
}

/** The filters of the view shown: the last ones the gateway accepted. */
let filters = {};

// --- WebSocket panel -----------------------------------------------------------------------

const table = new RowTable($("rows"), $("row-count"), (row, message) => [
  String(row.id ?? message.payload.entity_id),
  String(row.status ?? ""),
  String(row.amount ?? ""),
  String(row.customer_id ?? ""),
  String(row.tenant ?? ""),
  message.snapshot ? "snapshot" : message.payload.operation,
  `${message.partition}:${message.offset}`,
], false);

const client = createClient(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
client.on("state", (state) => showState("ws-state", state));
client.on("error", (error) => ($("filter-error").textContent = error.message));

let received = 0;
const recent = [];
/** What the resume after "drop connection" brought: the ack, and the events that the
 * gateway had already dispatched while the client was away (at or below the ack's position). */
let resume = null;
let sub = null;

function onData(message) {
  received += 1;
  recent.push(performance.now());
  table.apply(message);
  if (resume && !message.snapshot) {
    const key = message.source !== undefined ? `${message.source}:${message.partition}` : String(message.partition);
    const live = resume.ack.position[key] ?? resume.ack.position[String(message.partition)];
    if (live !== undefined && message.offset <= live) resume.replayed += 1;
    showResume();
  }
}

function showResume() {
  const { ack, replayed, duplicatesBefore } = resume;
  const repeats = sub.duplicatesDropped - duplicatesBefore;
  const note = $("resume");
  note.className = `note ${ack.recovered ? "good" : "bad"}`;
  note.dataset.recovered = String(ack.recovered);
  note.dataset.replayed = String(replayed);
  note.textContent = ack.recovered
    ? `Reconnected and resumed: ${replayed} event${replayed === 1 ? "" : "s"} produced while offline replayed, ` +
      `${repeats} repeat${repeats === 1 ? "" : "s"} dropped, nothing missed (recovered: true).`
    : "Reconnected, but the gateway could not resume (recovered: false): the table was reloaded from a fresh snapshot.";
}

function subscribe() {
  sub?.unsubscribe();
  table.clear();
  resume = null;
  sub = client.subscribe(TOPIC, { filters, snapshot: true }, onData, {
    onAck: (ack) => {
      if (ack.recovered === undefined || !resume) return;
      resume.ack = ack;
      showResume();
    },
    // Events may have been missed: the client takes a fresh snapshot next.
    onReset: () => table.clear(),
    onError: (error) => ($("filter-error").textContent = error.message),
  });
}

$("drop").onclick = () => {
  resume = { ack: { recovered: true, position: {} }, replayed: 0, duplicatesBefore: sub.duplicatesDropped };
  $("resume").className = "note muted";
  $("resume").textContent = `Connection dropped; reconnecting in ${OFFLINE_MS / 1000} s…`;
  client.reconnect(OFFLINE_MS);
};

/** Asks the gateway whether it accepts `candidate` (the `/sse` admission checks filters as a
 * subscribe does, and answers 400 with the code and message when it refuses them): null when
 * it does, else the refusal's text. The stream a good request opens is closed at once. */
async function refusal(candidate) {
  const abort = new AbortController();
  const params = new URLSearchParams({ topic: TOPIC, filters: JSON.stringify(candidate) });
  try {
    const response = await fetch(`/sse?${params}`, { signal: abort.signal });
    if (response.ok) return null;
    const { code, message } = await response.json();
    return `${code}: ${message}`;
  } catch (e) {
    return `the gateway could not check the filter: ${e.message}`;
  } finally {
    abort.abort();
  }
}

$("apply").onclick = async () => {
  let candidate;
  try {
    candidate = JSON.parse($("filter").value || "{}");
  } catch {
    $("filter-error").textContent = "the filter is not JSON; still showing the last one applied";
    return;
  }
  // A filter the gateway refuses leaves the view as it is: the tables keep the last good
  // subscription and the error says why.
  const refused = await refusal(candidate);
  if (refused) {
    $("filter-error").textContent = `${refused}; still showing ${JSON.stringify(filters)}`;
    return;
  }
  $("filter-error").textContent = "";
  filters = candidate;
  subscribe();
  sse.restart();
};

setInterval(() => {
  const now = performance.now();
  while (recent.length && recent[0] < now - 1000) recent.shift();
  $("rate").textContent = String(recent.length);
  $("received").textContent = String(received);
  $("duplicates").textContent = String(sub?.duplicatesDropped ?? 0);
}, 250);

// --- Server-Sent Events panel --------------------------------------------------------------

const sseTable = new RowTable($("sse-rows"), $("sse-row-count"), (row, message) => [
  String(row.id ?? message.payload.entity_id),
  String(row.status ?? ""),
  String(row.amount ?? ""),
  String(row.tenant ?? ""),
], true);

const sse = {
  stream: null,
  /** Opens the stream: a snapshot, then live; after a drop the helper resumes from the last
   * event id (a new EventSource each time, so a token would be fresh on every reconnect). */
  open() {
    this.stream = openEventStream("/sse", {
      topics: TOPIC,
      filters,
      snapshot: true,
      reconnect: { minDelayMs: 200, maxDelayMs: 5000 },
      onState: (state) => showState("sse-state", state),
      onEvent: (message) => sseTable.apply(message),
      // Events were missed, or a snapshot was cut short: a fresh snapshot follows.
      onReset: () => sseTable.clear(),
      onError: (error) => ($("filter-error").textContent = `SSE: ${error.message}`),
    });
  },
  reopen(delay) {
    this.stream.reconnect(delay);
  },
  restart() {
    this.stream?.close();
    sseTable.clear();
    this.open();
  },
};

$("sse-drop").onclick = () => sse.reopen(OFFLINE_MS);

function sameRows(a, b) {
  if (a.size !== b.size) return false;
  for (const [id, value] of a) if (b.get(id) !== value) return false;
  return true;
}

setInterval(() => {
  const same = sameRows(table.contents(), sseTable.contents());
  const element = $("consistency");
  element.className = same ? "good" : "muted";
  element.textContent = same ? `yes, all ${table.rows.size}` : "catching up…";
}, 1000);

subscribe();
sse.open();

/** For the browser test and the curious: the page's state. */
window.demo = { client, table, sseTable, get subscription() { return sub; }, get filters() { return filters; } };

/**
 * Who is watching (protocol section 10): a socket of its own subscribed to the topic's
 * presence, showing the count over every replica (the demo runs without tokens, so nobody is
 * named). It reconnects by itself; the tables above do not depend on it.
 */
function watchPresence() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const socket = new WebSocket(url);
  socket.onopen = () =>
    socket.send(JSON.stringify({ action: "subscribe", topic: TOPIC, presence: true, filters: { entity_id: "none" } }));
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type !== "presence") return;
    // Every subscription counts: this page's table, its SSE panel and this socket too.
    $("watching-count").textContent = String(message.subscribers);
    $("watching").dataset.subscribers = String(message.subscribers);
  };
  socket.onclose = () => setTimeout(watchPresence, 2000);
}
watchPresence();


// The demo page in a real browser: headless Chromium from the system (never a downloaded one)
// driven by playwright-core. Rows appear, a row changes in place, "drop connection" resumes
// with nothing missed and the table then equals the gateway's own snapshot of the topic, the
// SSE panel agrees after its own reconnect, a filter the gateway refuses (or that is not JSON)
// leaves both panels as they were and shows the error, and the demo stops cleanly. Takes a
// screenshot.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import WebSocket from "ws";

import { freePort, gatewayBinary, until } from "./support.mjs";

const chromium = process.env.CDC_GATEWAY_CHROMIUM ?? "/usr/bin/chromium";
// `npm run screenshot` writes the README's docs/demo.png; plain test runs leave the tree alone.
const screenshot = process.env.CDC_GATEWAY_SCREENSHOT
  ? resolve(process.env.CDC_GATEWAY_SCREENSHOT)
  : join(tmpdir(), "cdc-gateway-tests", "demo.png");

/** The gateway's snapshot of cdc.order, read on a connection of its own: id -> partition:offset. */
async function gatewaySnapshot(port) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
  const rows = new Map();
  await new Promise((resolve, reject) => {
    let expected;
    let got = 0;
    ws.on("error", reject);
    ws.on("open", () => ws.send(JSON.stringify({ action: "subscribe", topic: "cdc.order", snapshot: true })));
    ws.on("message", (text) => {
      const message = JSON.parse(text);
      if (message.type === "ack") expected = message.snapshot.rows;
      if (message.type === "data" && message.snapshot) {
        got += 1;
        const { entity_id: id, data } = message.payload;
        if (data !== null) rows.set(id, `${message.partition}:${message.offset}`);
      }
      if (expected !== undefined && got === expected) resolve();
    });
  });
  ws.close();
  return rows;
}

/** What the page's WebSocket table shows: id -> partition:offset, and how often each id appears. */
function pageRows(page) {
  return page.$$eval("#rows tr", (trs) => trs.map((tr) => [tr.dataset.id, tr.dataset.position]));
}

const same = (a, b) => a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);

test("the demo page in Chromium: live table, change in place, drop and resume, SSE panel", {
  skip: existsSync(chromium) ? false : `no Chromium at ${chromium} (scripts/install-browser.sh installs it)`,
}, async () => {
  const { chromium: launcher } = await import("playwright-core");
  const port = await freePort();
  const demo = spawn(gatewayBinary(), ["demo", "--listen", `127.0.0.1:${port}`, "--events-per-second", "8"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  demo.stderr.on("data", (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => demo.once("exit", (code) => resolve(code)));
  const browser = await launcher.launch({ executablePath: chromium, headless: true, args: ["--no-sandbox"] });
  try {
    await until(async () => {
      try {
        return (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200;
      } catch {
        return false;
      }
    }, "the demo becomes ready", 60_000);
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const problems = [];
    page.on("pageerror", (e) => problems.push(e.message));
    page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
    await page.goto(`http://127.0.0.1:${port}/`);

    await page.waitForSelector('#ws-state[data-state="open"]');
    await until(async () => (await pageRows(page)).length >= 5, "rows appear", 30_000);

    // Who is watching (presence): this page's subscriptions, then a second viewer's too.
    const watching = async (p) => Number(await p.getAttribute("#watching", "data-subscribers"));
    await until(async () => (await watching(page)) >= 2, "the page sees its own subscriptions", 15_000);
    const alone = await watching(page);
    const second = await browser.newPage();
    await second.goto(`http://127.0.0.1:${port}/`);
    await until(async () => (await watching(page)) > alone, "a second viewer shows in presence", 15_000);
    await second.close();
    await until(async () => (await watching(page)) === alone, "and goes when it leaves", 15_000);

    // A row changes in place: its position moves on and its id is still there once.
    const before = new Map(await pageRows(page));
    let changed;
    await until(async () => {
      const now = await pageRows(page);
      changed = now.find(([id, position]) => before.has(id) && before.get(id) !== position);
      return changed !== undefined;
    }, "a row changes", 30_000);
    const rows = await pageRows(page);
    assert.equal(rows.filter(([id]) => id === changed[0]).length, 1, `order ${changed[0]} appears once`);
    assert.equal(new Set(rows.map(([id]) => id)).size, rows.length, "every id once");

    // Drop the connection: the client is away 2 s, then resumes from its position.
    await page.click("#drop");
    await page.waitForSelector('#ws-state[data-state="reconnecting"]');
    await page.waitForSelector('#ws-state[data-state="open"]', { timeout: 30_000 });
    await page.waitForSelector('#resume[data-recovered="true"]', { timeout: 30_000 });
    await until(async () => Number(await page.getAttribute("#resume", "data-replayed")) > 0,
      "events produced while offline are replayed", 10_000);

    // The table equals the gateway's snapshot (events keep flowing: find a quiet moment).
    let attempt = 0;
    await until(async () => {
      attempt += 1;
      const shown = new Map(await pageRows(page));
      const truth = await gatewaySnapshot(port);
      const shownAfter = new Map(await pageRows(page));
      return same(shown, truth) && same(shownAfter, truth);
    }, "the table equals the gateway's snapshot", 30_000);

    // The SSE panel drops its stream, resumes, and agrees with the WebSocket table.
    await page.click("#sse-drop");
    await page.waitForSelector('#sse-state[data-state="reconnecting"]');
    await page.waitForSelector('#sse-state[data-state="open"]', { timeout: 30_000 });
    await page.waitForSelector("#consistency.good", { timeout: 30_000 });
    assert.deepEqual(problems, [], "no errors in the page");
    await page.screenshot({ path: screenshot });
    console.log(`table matched the gateway's snapshot on attempt ${attempt}; screenshot: ${screenshot}`);

    // A filter the gateway refuses, and one that is not JSON: both panels keep the last good
    // view and the error is shown.
    for (const [bad, shown] of [['{"status": "paid"}', /INVALID_FILTER/], ['{"row.tenant": ', /not JSON/]]) {
      const kept = await pageRows(page);
      const sseKept = await page.$$eval("#sse-rows tr", (trs) => trs.length);
      await page.fill("#filter", bad);
      await page.click("#apply");
      await page.waitForFunction((re) => new RegExp(re).test(document.getElementById("filter-error").textContent),
        shown.source, { timeout: 10_000 });
      await sleep(1500); // anything the refusal did to the view shows by then
      const rows = await pageRows(page);
      // Live changes go on meanwhile (a delete now and then): most of the rows stay.
      const stayed = kept.filter(([id]) => rows.some(([other]) => other === id)).length;
      assert.ok(stayed > 0 && stayed >= kept.length / 2, `the table keeps its rows after ${bad}: ${stayed} of ${kept.length}`);
      assert.equal(await page.evaluate(() => window.demo.subscription.active), true, `the subscription is kept after ${bad}`);
      assert.deepEqual(await page.evaluate(() => window.demo.filters), {}, "the filters shown are the last good ones");
      assert.equal(await page.getAttribute("#sse-state", "data-state"), "open", `the SSE stream is kept after ${bad}`);
      assert.ok((await page.$$eval("#sse-rows tr", (trs) => trs.length)) >= sseKept / 2, "the SSE table keeps its rows");
      await page.waitForSelector("#consistency.good", { timeout: 30_000 });
    }

    // A good filter after them applies to both panels.
    await page.fill("#filter", '{"row.tenant": "acme"}');
    await page.click("#apply");
    await until(async () => (await page.textContent("#filter-error")) === "", "the error clears", 10_000);
    await page.waitForSelector("#consistency.good", { timeout: 30_000 });
    const tenants = await page.$$eval("#rows tr", (trs) => trs.map((tr) => tr.children[4].textContent));
    assert.ok(tenants.length > 0 && tenants.every((t) => t === "acme"), `only acme rows: ${tenants}`);
    // The refused check is a 400 the browser reports as a failed resource load; nothing else.
    const unexpected = problems.filter((p) => !/status of 400/.test(p));
    assert.deepEqual(unexpected, [], "no errors in the page");
  } finally {
    await browser.close();
    demo.kill("SIGINT");
  }
  assert.equal(await exited, 0, "the demo stops with status 0");
  const tail = stderr.slice(stderr.indexOf("shutdown complete"));
  assert.ok(stderr.includes("shutdown complete"), stderr.slice(-2000));
  assert.doesNotMatch(tail, /ERROR/, "no librdkafka errors after shutdown complete");
  await sleep(0);
});

// A scripted WebSocket for unit tests: every instance is recorded, the test opens it, feeds it
// server messages and closes it, and reads what the client sent (validated against the
// client-message schema, so the client never sends what the gateway would refuse).
import assert from "node:assert/strict";
import { validator } from "./schemas.mjs";

const validClientMessage = validator("client-message.schema.json");

export class FakeSocket {
  static instances = [];
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  sent = [];
  closedWith = undefined;

  constructor(url) {
    this.url = url;
    FakeSocket.instances.push(this);
  }

  static last() {
    return FakeSocket.instances.at(-1);
  }

  static reset() {
    FakeSocket.instances = [];
  }

  send(text) {
    assert.equal(this.readyState, 1, "send on an open socket only");
    const message = JSON.parse(text);
    assert.ok(validClientMessage(message), `${text}: ${JSON.stringify(validClientMessage.errors)}`);
    this.sent.push(message);
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // Test side.
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  deliver(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The last message sent with this action. */
  lastSent(action) {
    return this.sent.filter((m) => m.action === action).at(-1);
  }
}

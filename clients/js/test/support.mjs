// Real parts for the end-to-end tests, as tests/e2e/support.rs has them for the Rust tests:
// a tansu broker on a free loopback port, the gateway binary as a child process (stopped with
// SIGTERM, restarted on the same port), a kafkajs producer. Every process is killed when the
// test process exits.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync } from "node:fs";
import { createServer, connect } from "node:net";
import { homedir, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { Kafka, logLevel, Partitioners } from "kafkajs";
import WebSocket from "ws";

const repo = join(dirname(fileURLToPath(import.meta.url)), "../../..");
const logs = join(tmpdir(), "cdc-gateway-tests");
mkdirSync(logs, { recursive: true });

/** The gateway binary: CDC_GATEWAY_BIN, else the debug build of the shared target directory. */
export function gatewayBinary() {
  const target = process.env.CARGO_TARGET_DIR ?? join(repo, "target");
  const path = process.env.CDC_GATEWAY_BIN ?? join(target, "debug", "cdc-gateway");
  if (!existsSync(path)) {
    throw new Error(`no gateway binary at ${path}: run \`cargo build\` (or set CDC_GATEWAY_BIN)`);
  }
  return path;
}

/** The tansu broker: CDC_GATEWAY_TANSU, else where scripts/install-tansu.sh puts it. */
export function tansuBinary() {
  const path = process.env.CDC_GATEWAY_TANSU ?? join(homedir(), ".cache/cdc-gateway/tansu/bin/tansu");
  if (!existsSync(path)) throw new Error(`no tansu at ${path}: run scripts/install-tansu.sh`);
  return path;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, withinMs = 30_000) {
  const deadline = Date.now() + withinMs;
  while (Date.now() < deadline) {
    const open = await new Promise((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => (socket.destroy(), resolve(true)));
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on port ${port}`);
}

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

function start(binary, args, log) {
  const child = spawn(binary, args, { stdio: ["ignore", "ignore", "pipe"] });
  child.stderr.pipe(createWriteStream(join(logs, log)));
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

/** Waits until `predicate()` holds, or fails with `what`. */
export async function until(predicate, what, withinMs = 30_000) {
  const deadline = Date.now() + withinMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`);
    await sleep(25);
  }
}

/** A tansu broker with in-memory storage on a free port. */
export async function startTansu() {
  const port = await freePort();
  const url = `tcp://127.0.0.1:${port}`;
  const child = start(
    tansuBinary(),
    ["broker", "--storage-engine", "memory://tansu/", "--listener-url", url, "--advertised-listener-url", url],
    `tansu-${port}.log`,
  );
  await waitForPort(port);
  const kafka = new Kafka({ clientId: "cdc-gateway-client-tests", brokers: [`127.0.0.1:${port}`], logLevel: logLevel.NOTHING });
  return {
    brokers: `127.0.0.1:${port}`,
    kafka,
    async createTopic(topic, partitions) {
      const admin = kafka.admin();
      await admin.connect();
      await admin.createTopics({ topics: [{ topic, numPartitions: partitions, replicationFactor: 1 }] });
      await admin.disconnect();
    },
    /** A producer whose send returns the (partition, offset) the broker gave the record. */
    async producer() {
      const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false });
      await producer.connect();
      return {
        async send(topic, key, value) {
          const [meta] = await producer.send({ topic, acks: -1, messages: [{ key, value: JSON.stringify(value) }] });
          if (meta.errorCode !== 0) throw new Error(`produce failed: ${JSON.stringify(meta)}`);
          return { partition: meta.partition, offset: Number(meta.baseOffset) };
        },
        disconnect: () => producer.disconnect(),
      };
    },
    stop: () => child.kill("SIGKILL"),
  };
}

/** The gateway binary on a fixed port, restartable there. */
export class Gateway {
  constructor(port, args) {
    this.port = port;
    this.args = args;
    this.child = null;
    this.runs = 0;
  }

  static async start(brokers, topic, extra = []) {
    const port = await freePort();
    const gateway = new Gateway(port, [
      "--brokers", brokers,
      "--source-topics", topic,
      "--group-id", `gw-js-${port}`,
      "--listen", `127.0.0.1:${port}`,
      "--auto-offset-reset", "earliest",
      "--log-level", "info,cdc_gateway=debug",
      ...extra,
    ]);
    await gateway.restart();
    return gateway;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Starts the process (again) and waits until /readyz answers 200. */
  async restart() {
    this.runs += 1;
    this.child = start(gatewayBinary(), this.args, `gateway-js-${this.port}-${this.runs}.log`);
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    let failed = false;
    exited.then(() => (failed = true));
    await until(async () => {
      if (failed) throw new Error(`the gateway exited at startup; see ${logs}/gateway-js-${this.port}-${this.runs}.log`);
      try {
        return (await fetch(`http://127.0.0.1:${this.port}/readyz`)).status === 200;
      } catch {
        return false;
      }
    }, "the gateway becomes ready", 60_000);
  }

  /** SIGTERM, then waits for the exit; returns the exit code. */
  async terminate() {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return child?.exitCode;
    const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    return exited;
  }
}

/** ws, recording every text frame it receives (for schema checks of real traffic). */
export function recordingWebSocket(frames, sockets = []) {
  return class RecordingWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
      this.on("message", (data, isBinary) => {
        if (!isBinary) frames.push(JSON.parse(data.toString()));
      });
    }
  };
}

/** An HS256 JWT. */
export function signJwt(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** A simple-envelope change of one order. */
export function orderChange(id, n, operation = "update") {
  return {
    entity_type: "order",
    entity_id: String(id),
    operation,
    data: operation === "delete" ? null : { id, n, status: "paid", amount: n % 500, tenant: "acme" },
    before: null,
    timestamp: new Date().toISOString(),
  };
}

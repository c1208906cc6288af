"""An S3 fault-injection proxy for tests/it/store_faults.rs: forwards every request to the real
S3 server (moto) and, while a fault is armed, breaks the matching ones the ways networks and S3
break them.

Usage: s3_fault_proxy.py UPSTREAM_PORT. Prints the port it listens on, then serves.
Control (never forwarded): POST /__faults with a JSON list of rules, each
  {"fault": "reset" | "slowdown" | "internal" | "truncate" | "stall",
   "method": "GET" | "PUT" | "POST" | ..., (optional: any)
   "path": "substring of the path", (optional: any)
   "times": N, (how many matching requests to break; -1: until cleared)
   "seconds": S} (stall only)
replaces the armed rules; GET /__faults answers what each rule has done so far.

- reset: the request is read, then the connection is closed with a TCP RST, no answer;
- slowdown / internal: S3's own 503 SlowDown / 500 InternalError answer, as XML;
- truncate: the upstream answer's status and headers (its full Content-Length) and half its
  body, then the connection is cut;
- stall: nothing is sent for S seconds, then the request is forwarded.
"""

import http.client
import http.server
import json
import socket
import struct
import sys
import threading
import time

UPSTREAM = ("127.0.0.1", int(sys.argv[1]))
LOCK = threading.Lock()
RULES = []


def take(method, path):
    with LOCK:
        for rule in RULES:
            if rule.get("method", method) != method or rule.get("path", "") not in path:
                continue
            if rule["times"] == 0:
                continue
            if rule["times"] > 0:
                rule["times"] -= 1
            rule["done"] = rule.get("done", 0) + 1
            return rule
    return None


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def control(self, body):
        global RULES
        if self.command == "POST":
            with LOCK:
                RULES = json.loads(body or b"[]")
        with LOCK:
            answer = json.dumps(RULES).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def s3_error(self, status, code):
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def forward(self, body):
        upstream = http.client.HTTPConnection(*UPSTREAM, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        return answer.status, answer.getheaders(), answer.read()

    def handle_one(self):
        body = self.body()
        if self.path.startswith("/__faults"):
            return self.control(body)
        rule = take(self.command, self.path)
        fault = rule and rule["fault"]
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "slowdown":
            return self.s3_error(503, "SlowDown")
        if fault == "internal":
            return self.s3_error(500, "InternalError")
        if fault == "stall":
            time.sleep(rule.get("seconds", 5))
        status, headers, data = self.forward(body)
        self.send_response_only(status)
        if self.command == "HEAD":
            for k, v in headers:
                if k.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(k, v)
            self.end_headers()
            return
        for k, v in headers:
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "truncate" and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()

"""A fault-injecting HTTP proxy for tests: real sockets on 127.0.0.1 between the tool and an S3 server.

The tool's endpoint URL points at the proxy; every request is forwarded to the upstream server unchanged
(the Host header too, so SigV4 signatures still verify) unless a rule says otherwise. Rules match a method
and a regular expression on the path + query, fire a given number of times, and do one of:

    reset_request   read half the request body, then reset the connection (RST)
    reset_response  forward, then send half of the response and reset the connection
    stall           forward, then wait `seconds` before answering
    delay           wait `seconds`, then forward (requests sent together reach the server in another order)
    truncate        forward, then announce the full body but send only half of it and close
    status          answer `status` with S3 error `code` (and `message`) without forwarding (500 InternalError...)
    corrupt         flip one byte of the request body before forwarding (the server's Content-MD5 check fails)
    corrupt_answer  flip one byte of the response body (what a bad link or disk would hand the client)
    headers         forward, then answer with the response headers in `headers` replaced (None: left out)

`upload_bytes` counts request-body bytes the client sent in PUT/POST requests, whole or cut short;
`agents` lists (method, target, User-Agent) of every request, to tell which HTTP stack sent it,
`arrivals` the time.monotonic() at which each of them arrived, with `at_once` the requests it was then
handling (that one included), and `peak` the most it ever handled at once.
"""

from __future__ import annotations

import dataclasses
import http.client
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import urlsplit

HOP_BY_HOP = {'connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'te', 'trailer', 'upgrade'}


@dataclasses.dataclass
class Rule:
    action: str
    method: Optional[str] = None
    match: Optional[str] = None
    times: int = 1                  # how often it fires; -1 = always
    status: int = 500
    code: str = 'InternalError'
    message: str = ''
    seconds: float = 0.0
    headers: Optional[Dict[str, Optional[str]]] = None
    hits: int = 0

    def applies(self, method: str, target: str) -> bool:
        return ((self.times < 0 or self.hits < self.times) and (self.method in (None, method)) and
                (self.match is None or re.search(self.match, target) is not None))


class ProxyServer(ThreadingHTTPServer):
    """A listen backlog like a real server's: socketserver's default of 5 drops the connections a client
    opens at once beyond it, which then wait a second for their SYN to be sent again."""
    request_queue_size = 1024


class FaultProxy:
    """Forwards to upstream, injecting the faults of its rules."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.rules: List[Rule] = []
        self.lock = threading.Lock()
        self.upload_bytes = 0
        self.log: List[tuple] = []
        self.agents: List[tuple] = []
        self.arrivals: List[float] = []
        self.at_once: List[int] = []
        self.active = 0
        self.peak = 0
        proxy = self

        class Handler(ProxyHandler):
            owner = proxy

        self.httpd = ProxyServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, action: str, method: Optional[str] = None, match: Optional[str] = None, times: int = 1,
            **options: object) -> Rule:
        rule = Rule(action, method, match, times, **options)  # type: ignore[arg-type]
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.log.clear()
            self.upload_bytes = 0

    def take(self, method: str, target: str) -> Optional[Rule]:
        with self.lock:
            for rule in self.rules:
                if rule.applies(method, target):
                    rule.hits += 1
                    return rule
        return None

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _reset(self) -> None:
        """Abort the connection with a TCP RST."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    def _proxy(self) -> None:
        owner = self.owner
        with owner.lock:
            owner.active += 1
            owner.peak = max(owner.peak, owner.active)
            owner.agents.append((self.command, self.path, self.headers.get('User-Agent', '')))
            owner.arrivals.append(time.monotonic())
            owner.at_once.append(owner.active)
        try:
            self._forward()
        finally:
            with owner.lock:
                owner.active -= 1

    def _forward(self) -> None:
        method, target = self.command, self.path
        length = int(self.headers.get('Content-Length') or 0)
        rule = self.owner.take(method, target)
        if rule and rule.action == 'reset_request':
            self.rfile.read(length // 2)
            self.owner.log.append((method, target, 'reset_request'))
            return self._reset()
        body = self.rfile.read(length) if length else b''
        if method in ('PUT', 'POST'):
            with self.owner.lock:
                self.owner.upload_bytes += len(body)
        if len(body) < length:          # the client died mid-request: nothing to forward
            self.close_connection = True
            return
        if rule and rule.action == 'status':
            self.owner.log.append((method, target, rule.status))
            error = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{rule.code}</Code>'
                     f'<Message>{rule.message or "injected " + rule.code}</Message><RequestId>0</RequestId></Error>').encode()
            self.send_response(rule.status)
            self.send_header('Content-Type', 'application/xml')
            self.send_header('Content-Length', str(0 if method == 'HEAD' else len(error)))
            self.end_headers()
            if method != 'HEAD':
                self.wfile.write(error)
            return
        if rule and rule.action == 'corrupt' and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        if rule and rule.action == 'delay':
            time.sleep(rule.seconds)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
        try:
            upstream.request(method, target, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            status, reason, reply_headers = response.status, response.reason, response.getheaders()
        finally:
            upstream.close()
        self.owner.log.append((method, target, status))
        if rule and rule.action == 'headers' and rule.headers:
            replaced = {name.lower(): value for name, value in rule.headers.items()}
            reply_headers = [(name, value) for name, value in reply_headers if name.lower() not in replaced]
            reply_headers += [(name, value) for name, value in replaced.items() if value is not None]
        if rule and rule.action == 'stall':
            time.sleep(rule.seconds)
        self.send_response(status, reason)
        content_length = None
        for name, value in reply_headers:
            if name.lower() in HOP_BY_HOP:
                continue
            if name.lower() == 'content-length':
                content_length = value
                continue
            self.send_header(name, value)
        self.send_header('Content-Length', content_length if method == 'HEAD' and content_length else str(len(data)))
        self.end_headers()
        if method == 'HEAD':
            return
        if rule and rule.action == 'reset_response':
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            return self._reset()
        if rule and rule.action == 'corrupt_answer' and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if rule and rule.action == 'truncate':
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

"""A front that speaks Google Cloud Storage's XML API where it differs from S3, in front of SeaweedFS.

The tool talks to it with GCS HMAC keys as it would to https://storage.googleapis.com; the front checks the
key id, re-signs each request for SeaweedFS and rewrites what GCS does otherwise, each difference from GCS's
documentation:

- x-amz-* headers without an x-goog-* equivalent are not processed (cloud.google.com/storage/docs/
  aws-simple-migration: "Cloud Storage processes x-amz-* headers that have an x-goog-* equivalent"): the
  additional checksums x-amz-checksum-* and x-amz-sdk-checksum-algorithm are dropped, so a CRC32C or
  CRC64NVME sent that way is neither verified nor stored. Content-MD5 is verified (xml-api/reference-headers).
- x-amz-storage-class must be one of GCS's classes (same page): STANDARD, NEARLINE, COLDLINE, ARCHIVE; any
  other is refused (400 InvalidArgument). The class is answered as x-goog-storage-class and x-amz-storage-class.
- "An object created from a multipart upload has a CRC32c hash, but not an MD5 hash, and the object's ETag is
  not based on an MD5 hash" (xml-api/post-object-complete): such objects get an opaque ETag, in the Complete
  answer, HEAD, GET and listings alike.
- Object answers carry x-goog-generation, x-goog-metageneration and x-goog-stored-content-length
  (xml-api/reference-headers); every answer carries x-goog-* headers.
- Copies read only GCS objects: x-amz-copy-source naming a bucket the front does not serve is refused, so no
  UploadPartCopy crosses providers; `copy_requests` lists every copy asked for.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

GCS_CLASSES = ('STANDARD', 'NEARLINE', 'COLDLINE', 'ARCHIVE')
DROPPED = re.compile(r'x-amz-checksum-|x-amz-sdk-checksum-algorithm$|x-amz-trailer$')
NOT_FORWARDED = {'host', 'authorization', 'x-amz-date', 'x-amz-content-sha256', 'x-amz-security-token', 'connection',
                 'keep-alive', 'expect', 'transfer-encoding', 'x-amz-storage-class'}


class GcsFront:
    """The front on 127.0.0.1: `endpoint` to give the tool, the HMAC key id it accepts, what it saw."""

    def __init__(self, upstream: str, upstream_keys: Tuple[str, str], hmac_key_id: str, buckets: List[str]) -> None:
        self.upstream = urlsplit(upstream)
        self.upstream_keys = upstream_keys
        self.hmac_key_id = hmac_key_id
        self.buckets = set(buckets)             # the buckets "in GCS"
        self.classes: Dict[str, str] = {}       # bucket/key (or upload id) -> storage class
        self.composed: Dict[str, str] = {}      # bucket/key -> the opaque ETag of an object made by multipart
        self.copy_requests: List[str] = []
        self.dropped_headers: List[str] = []
        self.lock = threading.Lock()
        front = self

        class Handler(FrontHandler):
            owner = front
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f'http://127.0.0.1:{self.server.server_address[1]}'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    owner: GcsFront

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _error(self, status: int, code: str, message: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
                '</Error>').encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/xml')
        self.send_header('Content-Length', str(len(body)))
        self.send_header('x-goog-api-version', '2')
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        front = self.owner
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if f'Credential={front.hmac_key_id}/' not in self.headers.get('Authorization', ''):
            self._error(403, 'InvalidAccessKeyId', 'The GCS HMAC key id is not known')
            return
        url = urlsplit(self.path)
        parts = unquote(url.path).lstrip('/').split('/', 1)
        bucket, key = parts[0], parts[1] if len(parts) > 1 else ''
        query = parse_qs(url.query, keep_blank_values=True)
        headers = {}
        for name, value in self.headers.items():
            lower = name.lower()
            if DROPPED.match(lower):
                with front.lock:
                    front.dropped_headers.append(lower)
            elif lower not in NOT_FORWARDED:
                headers[name] = value
        storage_class = self.headers.get('x-amz-storage-class') or self.headers.get('x-goog-storage-class')
        if storage_class and storage_class not in GCS_CLASSES:
            self._error(400, 'InvalidArgument', f'Invalid storage class: {storage_class}')
            return
        source = self.headers.get('x-amz-copy-source')
        if source:
            with front.lock:
                front.copy_requests.append(source)
            if unquote(source).lstrip('/').split('/', 1)[0] not in front.buckets:
                self._error(400, 'InvalidArgument', 'x-amz-copy-source must name a Cloud Storage object')
                return
        status, answer_headers, answer = self._forward(body, headers)
        name = f'{bucket}/{key}'
        if self.command == 'POST' and 'uploads' in query and status == 200:
            upload_id = re.search(rb'<UploadId>(.*?)</UploadId>', answer)
            if upload_id:
                with front.lock:
                    front.classes[upload_id.group(1).decode()] = storage_class or 'STANDARD'
        elif self.command == 'POST' and 'uploadId' in query and status == 200 and b'<ETag>' in answer:
            opaque = '"' + base64.b64encode(hashlib.sha256(answer).digest()[:12]).decode() + '"'
            with front.lock:
                front.composed[name] = opaque
                front.classes[name] = front.classes.pop(query['uploadId'][0], 'STANDARD')
            answer = re.sub(rb'<ETag>.*?</ETag>', f'<ETag>{opaque}</ETag>'.replace('"', '&quot;').encode(), answer)
        elif self.command == 'PUT' and key and 'uploadId' not in query and status == 200:
            with front.lock:
                front.classes[name] = storage_class or 'STANDARD'
                front.composed.pop(name, None)
        elif self.command == 'DELETE' and key and not query and status in (200, 204):
            with front.lock:
                front.composed.pop(name, None)
        if key and self.command in ('GET', 'HEAD') and not query.get('uploadId') and status in (200, 206):
            with front.lock:
                opaque, kept_class = front.composed.get(name), front.classes.get(name, 'STANDARD')
            if opaque:
                answer_headers = [(h, opaque if h.lower() == 'etag' else v) for h, v in answer_headers]
            answer_headers = [(h, v) for h, v in answer_headers if h.lower() != 'x-amz-storage-class']
            answer_headers += [('x-goog-storage-class', kept_class), ('x-amz-storage-class', kept_class),
                               ('x-goog-generation', '1764460800000000'), ('x-goog-metageneration', '1')]
        if not key and self.command == 'GET' and status == 200 and b'<Contents>' in answer:
            answer = self._listing_etags(bucket, answer)
        answer_headers.append(('x-goog-api-version', '2'))
        self.send_response(status)
        for header, value in answer_headers:
            if header.lower() not in ('content-length', 'transfer-encoding', 'connection'):
                self.send_header(header, value)
        length = answer_headers and next((v for h, v in answer_headers if h.lower() == 'content-length'), None)
        self.send_header('Content-Length', length if self.command == 'HEAD' and length else str(len(answer)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(answer)

    def _listing_etags(self, bucket: str, answer: bytes) -> bytes:
        front = self.owner

        def replace(match: re.Match) -> bytes:
            entry = match.group(0)
            key = re.search(rb'<Key>(.*?)</Key>', entry)
            opaque = front.composed.get(f'{bucket}/{key.group(1).decode()}') if key else None
            if not opaque:
                return entry
            return re.sub(rb'<ETag>.*?</ETag>', f'<ETag>{opaque}</ETag>'.replace('"', '&quot;').encode(), entry)
        return re.sub(rb'<Contents>.*?</Contents>', replace, answer, flags=re.S)

    def _forward(self, body: bytes, headers: Dict[str, str]) -> Tuple[int, List[Tuple[str, str]], bytes]:
        """The request, re-signed for the backing store with its own keys; its answer."""
        import botocore.auth
        import botocore.awsrequest
        import botocore.credentials
        front = self.owner
        url = f'{front.upstream.scheme}://{front.upstream.netloc}{self.path}'
        request = botocore.awsrequest.AWSRequest(method=self.command, url=url, data=body, headers=headers)
        request.headers['x-amz-content-sha256'] = hashlib.sha256(body).hexdigest()
        botocore.auth.S3SigV4Auth(botocore.credentials.Credentials(*front.upstream_keys), 's3',
                                  'us-east-1').add_auth(request)
        connection = http.client.HTTPConnection(front.upstream.hostname, front.upstream.port, timeout=120)
        try:
            connection.request(self.command, self.path, body=body, headers=dict(request.headers.items()))
            response = connection.getresponse()
            answer = response.read()
            return response.status, list(response.getheaders()), answer
        finally:
            connection.close()

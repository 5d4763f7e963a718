"""A small Aliyun-OSS-protocol server for tests: real HTTP on 127.0.0.1, so the real oss2 SDK runs end to end.

It verifies the OSS V1 signature (`Authorization: OSS key:signature`), and serves, like OSS:
ListObjects (v1, namespace-less XML, url encoding), HeadObject, GetObject with Range (the WHOLE object,
HTTP 200, when the range end passes the size), If-Match (412), the server-computed
`x-oss-hash-crc64ecma` of every object, user metadata (`x-oss-meta-*`), PutObject and DeleteObject.
`corrupt` names keys whose served bytes get one byte flipped (the CRC header stays right).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Set
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import crcmod

CRC64_ECMA = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)
SUBRESOURCES = {'acl', 'uploads', 'location', 'cors', 'logging', 'website', 'referer', 'lifecycle', 'delete',
                'append', 'tagging', 'objectMeta', 'uploadId', 'partNumber', 'security-token', 'position',
                'img', 'style', 'styleName', 'replication', 'replicationProgress', 'replicationLocation',
                'cname', 'qos', 'startTime', 'endTime', 'symlink', 'x-oss-process', 'response-content-type',
                'response-content-language', 'response-expires', 'response-cache-control',
                'response-content-disposition', 'response-content-encoding', 'udf', 'udfName', 'udfImage',
                'udfId', 'udfImageDesc', 'udfApplication', 'udfApplicationLog', 'restore', 'callback',
                'callback-var', 'versionId', 'versioning', 'versions', 'encryption', 'policy', 'stat'}


class StoredObject:
    def __init__(self, data: bytes, content_type: str, meta: Dict[str, str]) -> None:
        self.data = data
        self.etag = hashlib.md5(data).hexdigest().upper()
        self.crc64 = CRC64_ECMA(data)
        self.content_type = content_type or 'application/octet-stream'
        self.meta = meta
        self.modified = time.time()


class OssServer:
    """Buckets of objects in memory behind an OSS-speaking HTTP server."""

    def __init__(self, access_key: str, secret: str) -> None:
        self.access_key, self.secret = access_key, secret
        self.buckets: Dict[str, Dict[str, StoredObject]] = {}
        self.corrupt: Set[str] = set()
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(OssHandler):
            oss = server

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> 'OssServer':
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def bucket(self, name: Optional[str] = None) -> str:
        name = name or f'oss-{uuid.uuid4().hex[:10]}'
        with self.lock:
            self.buckets.setdefault(name, {})
        return name

    def put(self, bucket: str, key: str, data: bytes, content_type: str = '', **meta: str) -> StoredObject:
        with self.lock:
            stored = self.buckets[bucket][key] = StoredObject(data, content_type, meta)
        return stored


class OssHandler(BaseHTTPRequestHandler):
    oss: OssServer
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args: object) -> None:   # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _reply(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
               head_only: bool = False) -> None:
        headers = dict(headers or {})
        headers.setdefault('Content-Length', str(len(body)))
        self.send_response(status)
        self.send_header('x-oss-request-id', uuid.uuid4().hex.upper()[:24])
        self.send_header('Date', email.utils.formatdate(usegmt=True))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, head_only: bool = False) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{escape(message)}'
                f'</Message><RequestId>0</RequestId><HostId>127.0.0.1</HostId></Error>').encode()
        self._reply(status, b'' if head_only else body, {'Content-Type': 'application/xml'}, head_only)

    def _target(self):
        parts = urlsplit(self.path)
        path = parts.path.lstrip('/')
        bucket, _, key = path.partition('/')
        return unquote(bucket), unquote(key), dict(parse_qsl(parts.query, keep_blank_values=True))

    def _authorised(self, bucket: str, key: str, params: Dict[str, str]) -> Optional[tuple]:
        header = self.headers.get('Authorization', '')
        if not header.startswith('OSS ') or ':' not in header:
            return (403, 'AccessDenied', 'Anonymous access is forbidden')
        key_id, signature = header[4:].rsplit(':', 1)
        if key_id != self.oss.access_key:
            return (403, 'InvalidAccessKeyId', 'The OSS Access Key Id you provided does not exist in our records.')
        canonical = sorted((k.lower(), v) for k, v in self.headers.items() if k.lower().startswith('x-oss-'))
        headers = ''.join(f'{k}:{v}\n' for k, v in canonical)
        sub = sorted((k, v) for k, v in params.items() if k in SUBRESOURCES)
        resource = f'/{bucket}/{key}' + ('?' + '&'.join(k + ('=' + v if v else '') for k, v in sub) if sub else '')
        string = '\n'.join([self.command, self.headers.get('Content-MD5', ''), self.headers.get('Content-Type', ''),
                            self.headers.get('Date', ''), headers + resource])
        expected = base64.b64encode(hmac.new(self.oss.secret.encode(), string.encode('utf-8'),
                                             hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(expected, signature):
            return (403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match')
        return None

    def _begin(self, head_only: bool = False):
        with self.oss.lock:
            self.oss.requests += 1
        bucket, key, params = self._target()
        denied = self._authorised(bucket, key, params)
        if denied:
            self._error(*denied, head_only=head_only)
            return None
        if bucket not in self.oss.buckets:
            self._error(404, 'NoSuchBucket', 'The specified bucket does not exist.', head_only)
            return None
        return bucket, key, params

    @staticmethod
    def _object_headers(stored: StoredObject) -> Dict[str, str]:
        headers = {'ETag': f'"{stored.etag}"', 'Content-Type': stored.content_type,
                   'Last-Modified': email.utils.formatdate(stored.modified, usegmt=True),
                   'x-oss-hash-crc64ecma': str(stored.crc64), 'x-oss-object-type': 'Normal',
                   'x-oss-storage-class': 'Standard', 'Accept-Ranges': 'bytes'}
        headers.update({f'x-oss-meta-{name}': value for name, value in stored.meta.items()})
        return headers

    # -- verbs ------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        bucket, key, params = begun
        if not key:
            return self._list(bucket, params)
        stored = self.oss.buckets[bucket].get(key)
        if stored is None:
            return self._error(404, 'NoSuchKey', 'The specified key does not exist.')
        match = self.headers.get('If-Match')
        if match and match.strip('"') != stored.etag:
            return self._error(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold.')
        data, status, headers = stored.data, 200, self._object_headers(stored)
        byte_range = self.headers.get('Range', '')
        if byte_range.startswith('bytes='):
            first, _, last = byte_range[6:].partition('-')
            start = int(first) if first else max(0, len(data) - int(last))
            end = int(last) if first and last else len(data) - 1
            if start < len(data) and end < len(data) and start <= end:   # else OSS sends the whole object
                headers['Content-Range'] = f'bytes {start}-{end}/{len(data)}'
                data, status = data[start:end + 1], 206
        if key in self.oss.corrupt and data:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        self._reply(status, data, headers)

    def do_HEAD(self) -> None:
        begun = self._begin(head_only=True)
        if begun is None:
            return
        bucket, key, _ = begun
        stored = self.oss.buckets[bucket].get(key)
        if stored is None:
            return self._reply(404, b'', {}, head_only=True)
        headers = self._object_headers(stored)
        headers['Content-Length'] = str(len(stored.data))
        self._reply(200, b'', headers, head_only=True)

    def do_PUT(self) -> None:
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length)
        begun = self._begin()
        if begun is None:
            return
        bucket, key, _ = begun
        expected = self.headers.get('Content-MD5')
        if expected and base64.b64encode(hashlib.md5(body).digest()).decode() != expected:
            return self._error(400, 'InvalidDigest', 'The Content-MD5 you specified was invalid.')
        meta = {k.lower()[len('x-oss-meta-'):]: v for k, v in self.headers.items() if k.lower().startswith('x-oss-meta-')}
        stored = self.oss.put(bucket, key, body, self.headers.get('Content-Type', ''), **meta)
        self._reply(200, b'', {'ETag': f'"{stored.etag}"', 'x-oss-hash-crc64ecma': str(stored.crc64)})

    def do_DELETE(self) -> None:
        begun = self._begin()
        if begun is None:
            return
        bucket, key, _ = begun
        with self.oss.lock:
            self.oss.buckets[bucket].pop(key, None)
        self._reply(204)

    def _list(self, bucket: str, params: Dict[str, str]) -> None:
        prefix, marker = params.get('prefix', ''), params.get('marker', '')
        max_keys = int(params.get('max-keys') or 100)
        encode = params.get('encoding-type') == 'url'
        keys = sorted(k for k in self.oss.buckets[bucket] if k.startswith(prefix) and k > marker)
        page, truncated = keys[:max_keys], len(keys) > max_keys
        name = (lambda k: quote(k, safe='')) if encode else escape
        items = ''.join(
            f'<Contents><Key>{name(k)}</Key><LastModified>'
            f'{time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.oss.buckets[bucket][k].modified))}'
            f'</LastModified><ETag>"{self.oss.buckets[bucket][k].etag}"</ETag><Type>Normal</Type>'
            f'<Size>{len(self.oss.buckets[bucket][k].data)}</Size><StorageClass>Standard</StorageClass>'
            f'<Owner><ID>1</ID><DisplayName>1</DisplayName></Owner></Contents>' for k in page)
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>'
                f'<Name>{bucket}</Name><Prefix>{name(prefix)}</Prefix><Marker>{name(marker)}</Marker>'
                f'<MaxKeys>{max_keys}</MaxKeys><Delimiter></Delimiter>'
                f'{"<EncodingType>url</EncodingType>" if encode else ""}'
                f'<IsTruncated>{"true" if truncated else "false"}</IsTruncated>'
                f'{"<NextMarker>" + name(page[-1]) + "</NextMarker>" if truncated else ""}{items}'
                '</ListBucketResult>').encode('utf-8')
        self._reply(200, body, {'Content-Type': 'application/xml'})

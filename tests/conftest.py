"""Shared fixtures: real S3 protocol servers on 127.0.0.1, AWS profiles for them, and a way to run the tool.

Servers (session-scoped, started once): SeaweedFS (`weed mini`, real SigV4 auth, verifies Content-MD5),
moto in server mode, and `rclone serve s3` (a quirky S3-compatible store). Tests create their own
buckets with unique names, so they never see each other's objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import boto3
import botocore.config
import botocore.handlers
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / 's3_upload.py'
CLUSTER = ROOT / 's3_upload_cluster.py'
sys.path.insert(0, str(ROOT))

ADMIN_KEY, ADMIN_SECRET = 'SWADMINKEY0000000001', 'seaweed/admin/secret/key/0000000000000001'
READONLY_KEY, READONLY_SECRET = 'SWREADONLYKEY0000002', 'seaweed/readonly/secret/key/00000000000002'
SOURCE_KEY, SOURCE_SECRET = 'SWSOURCEKEY000000003', 'seaweed/source/secret/key/000000000000003'
ISOLATED_KEY, ISOLATED_SECRET = 'SWISOLATEDKEY0000007', 'seaweed/isolated/secret/key/0000000000007'
ISOLATED_BUCKET = 'isolated-dest'      # the only bucket the 'seaweed_isolated' profile may touch
MOTO_KEY, MOTO_SECRET = 'MOTOACCESSKEY0000004', 'moto/secret/key/00000000000000000000004'
GCS_KEY, GCS_SECRET = 'GOOG1EGCSHMACKEY0000000000000009', 'gcs/hmac/secret/000000000000000000009'   # tests/gcs_front.py
RCLONE_KEY, RCLONE_SECRET = 'RCLONEACCESSKEY00005', 'rclone/secret/key/0000000000000000000005'
SESSION_TOKEN = 'FwoGZXIvYXdzEXAMPLESESSIONTOKEN0000000000000000000000000000000000000008'
MiB = 1024 * 1024
# Parts of 5 MiB, and every file above 5 MiB a multipart upload: multipart runs with small files.
SMALL_PARTS = {'ChunkSize': 5, 'ResumableThreshold': 5}


def free_port(exclude: tuple = ()) -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return port if port not in exclude else free_port(exclude)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'{what} exited with {process.returncode}')
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f'{what} did not open port {port}')


@dataclasses.dataclass
class S3Server:
    """A running S3 protocol server and the profile names that reach it."""
    name: str
    endpoint: str
    profile: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log: Path

    def client(self, access_key: Optional[str] = None, secret_key: Optional[str] = None):
        config = botocore.config.Config(s3={'addressing_style': 'path'}, retries={'max_attempts': 5},
                                        request_checksum_calculation='when_required',
                                        response_checksum_validation='when_required')
        client = boto3.client('s3', endpoint_url=self.endpoint, region_name='us-east-1', config=config,
                              aws_access_key_id=access_key or self.access_key,
                              aws_secret_access_key=secret_key or self.secret_key)
        # SeaweedFS answers "Expect: 100-continue" in a way urllib3 sometimes cannot parse (60 s stalls).
        client.meta.events.unregister('before-call.s3', botocore.handlers.add_expect_header)
        return client

    def bucket(self, prefix: str = 'test') -> str:
        """Create a new empty bucket (retrying while the server warms up) and return its name."""
        name = f'{prefix}-{uuid.uuid4().hex[:12]}'
        client = self.client()
        deadline = time.time() + 30
        while True:
            try:
                client.create_bucket(Bucket=name)
                return name
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_seaweedfs(workdir: Path) -> S3Server:
    identities = {'identities': [
        {'name': 'admin', 'credentials': [{'accessKey': ADMIN_KEY, 'secretKey': ADMIN_SECRET}],
         'actions': ['Admin', 'Read', 'Write', 'List', 'Tagging']},
        {'name': 'readonly', 'credentials': [{'accessKey': READONLY_KEY, 'secretKey': READONLY_SECRET}],
         'actions': ['Read', 'List']},
        {'name': 'source', 'credentials': [{'accessKey': SOURCE_KEY, 'secretKey': SOURCE_SECRET}],
         'actions': ['Admin', 'Read', 'Write', 'List', 'Tagging']},
        {'name': 'isolated', 'credentials': [{'accessKey': ISOLATED_KEY, 'secretKey': ISOLATED_SECRET}],
         'actions': [f'{action}:{ISOLATED_BUCKET}' for action in ('Read', 'Write', 'List', 'Tagging')]},
    ]}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 's3.json').write_text(json.dumps(identities))
    for _ in range(2):      # a port found free can be taken (by an outgoing connection) before weed binds it
        try:
            return _start_seaweedfs_once(workdir)
        except RuntimeError:
            if b'Port allocation failed' not in (workdir / 'weed.log').read_bytes():
                raise
    return _start_seaweedfs_once(workdir)


def _start_seaweedfs_once(workdir: Path) -> S3Server:
    while True:
        base = free_port()
        ports = [base, base + 1000, base + 1001, base + 1002, base + 1003]
        if base + 11003 < 65000 and all(port_is_free(p) and port_is_free(p + 10000) for p in ports):
            break
    log = workdir / 'weed.log'
    command = ['weed', 'mini', f'-dir={workdir / "data"}', '-ip=127.0.0.1', '-ip.bind=127.0.0.1',
               f'-s3.port={ports[0]}', f'-master.port={ports[1]}', f'-volume.port={ports[2]}',
               f'-filer.port={ports[3]}', f'-admin.port={ports[4]}', '-webdav=false', '-admin.ui=false',
               '-s3.port.iceberg=0', '-s3.port.lance=0', '-master.telemetry=false',
               '-master.telemetry.url=http://127.0.0.1:9/', f'-s3.config={workdir / "s3.json"}',
               # every bucket is a collection with volumes of its own: allow many small ones
               '-volume.max=2000', '-master.volumeSizeLimitMB=32']
    (workdir / 'data').mkdir(exist_ok=True)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ADMIN_KEY, AWS_SECRET_ACCESS_KEY=ADMIN_SECRET)
    process = subprocess.Popen(command, stdout=log.open('wb'), stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    wait_for_port(ports[0], process, 'SeaweedFS')
    return S3Server('seaweedfs', f'http://127.0.0.1:{ports[0]}', 'seaweed', ADMIN_KEY, ADMIN_SECRET, process, log)


def start_moto(workdir: Path) -> S3Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / 'moto.log'
    process = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
                               stdout=log.open('wb'), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, process, 'moto')
    return S3Server('moto', f'http://127.0.0.1:{port}', 'moto', MOTO_KEY, MOTO_SECRET, process, log)


def start_rclone(workdir: Path) -> S3Server:
    (workdir / 'data').mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / 'rclone.log'
    command = ['rclone', 'serve', 's3', '--config', '/dev/null', '--addr', f'127.0.0.1:{port}',
               '--auth-key', f'{RCLONE_KEY},{RCLONE_SECRET}', '--etag-hash', 'MD5', str(workdir / 'data')]
    process = subprocess.Popen(command, stdout=log.open('wb'), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, process, 'rclone serve s3')
    return S3Server('rclone', f'http://127.0.0.1:{port}', 'rclone', RCLONE_KEY, RCLONE_SECRET, process, log)


@pytest.fixture(scope='session')
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('servers')


@pytest.fixture(scope='session')
def seaweed(workspace) -> Iterator[S3Server]:
    server = start_seaweedfs(workspace / 'seaweed')
    server.bucket('warmup')
    yield server
    server.stop()


@pytest.fixture(scope='session')
def moto(workspace) -> Iterator[S3Server]:
    server = start_moto(workspace / 'moto')
    yield server
    server.stop()


@pytest.fixture(scope='session')
def rclone(workspace) -> Iterator[S3Server]:
    server = start_rclone(workspace / 'rclone')
    yield server
    server.stop()


@pytest.fixture
def proxy(seaweed) -> Iterator[object]:
    """A fault-injecting proxy (tests/fault_proxy.py) in front of SeaweedFS; its rules are the test's own."""
    from fault_proxy import FaultProxy
    fault_proxy = FaultProxy(seaweed.endpoint)
    yield fault_proxy
    fault_proxy.stop()


@pytest.fixture
def proxy_for() -> Iterator[Callable[[S3Server], object]]:
    """Makes fault-injecting proxies in front of any server (stopped after the test)."""
    from fault_proxy import FaultProxy
    made: List[FaultProxy] = []

    def make(server: S3Server) -> FaultProxy:
        made.append(FaultProxy(server.endpoint))
        return made[-1]
    yield make
    for fault_proxy in made:
        fault_proxy.stop()


@pytest.fixture
def gcs(seaweed) -> Iterator[object]:
    """A Google Cloud Storage XML API front (tests/gcs_front.py) over SeaweedFS, with one bucket of its own."""
    from gcs_front import GcsFront
    bucket = seaweed.bucket('gcs')
    front = GcsFront(seaweed.endpoint, (ADMIN_KEY, ADMIN_SECRET), GCS_KEY, [bucket])
    front.bucket = bucket
    yield front
    front.stop()


@pytest.fixture(params=['seaweedfs', 'moto', 'rclone'])
def any_server(request) -> S3Server:
    """Each test using this runs once per server, so no single server's quirks are relied on."""
    return request.getfixturevalue({'seaweedfs': 'seaweed', 'moto': 'moto', 'rclone': 'rclone'}[request.param])


OSS_KEY, OSS_SECRET = 'OSSACCESSKEYID000006', 'oss/secret/key/000000000000000000006'


@pytest.fixture(scope='session')
def oss():
    """An OSS-protocol server (tests/oss_server.py) for ALIOSS_TO_S3."""
    from oss_server import OssServer
    server = OssServer(OSS_KEY, OSS_SECRET).start()
    yield server
    server.stop()


@pytest.fixture(scope='session')
def aws_files(workspace) -> Dict[str, str]:
    """A credentials file with a profile per server (and a few wrong ones), used by every tool run."""
    folder = workspace / 'aws'
    folder.mkdir(exist_ok=True)
    profiles = {
        'seaweed': (ADMIN_KEY, ADMIN_SECRET), 'seaweed_readonly': (READONLY_KEY, READONLY_SECRET),
        'seaweed_source': (SOURCE_KEY, SOURCE_SECRET), 'seaweed_isolated': (ISOLATED_KEY, ISOLATED_SECRET),
        'moto': (MOTO_KEY, MOTO_SECRET), 'gcs': (GCS_KEY, GCS_SECRET),
        'rclone': (RCLONE_KEY, RCLONE_SECRET), 'wrong_keys': ('WRONGACCESSKEY000000', 'wrong/secret/key/0000'),
    }
    credentials = folder / 'credentials'
    credentials.write_text(''.join(f'[{name}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n\n'
                                   for name, (key, secret) in profiles.items()) +
                           f'[moto_token]\naws_access_key_id = {MOTO_KEY}\naws_secret_access_key = {MOTO_SECRET}\n'
                           f'aws_session_token = {SESSION_TOKEN}\n')
    config = folder / 'config'
    config.write_text('[default]\nregion = us-east-1\n')
    return {'AWS_SHARED_CREDENTIALS_FILE': str(credentials), 'AWS_CONFIG_FILE': str(config)}


@pytest.fixture
def tool_env(aws_files, workspace) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    env.update(aws_files, AWS_EC2_METADATA_DISABLED='true', PYTHONUNBUFFERED='1',
               XDG_CACHE_HOME=str(workspace / 'cache'))      # botocore's models as the tool keeps them
    return env


@dataclasses.dataclass
class Run:
    """The outcome of one tool run: exit code, output and the JSON report (if written)."""
    code: int
    stdout: str
    stderr: str
    report: Optional[dict]


class Tool:
    """Runs s3_upload.py as a user would: a subprocess with an ini file, in a scratch folder."""

    def __init__(self, folder: Path, env: Dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.runs = 0

    def ini(self, settings: Dict[str, object], name: str = 'job.ini') -> Path:
        sections: Dict[str, Dict[str, object]] = {}
        import s3_upload
        for key, value in settings.items():
            option = s3_upload.OPTIONS_BY_KEY.get(key.lower())
            section = option.section if option else 'Advanced'
            sections.setdefault(section, {})[key] = value
        path = self.folder / name
        path.write_text(''.join(f'[{section}]\n' + ''.join(f'{k} = {v}\n' for k, v in values.items()) + '\n'
                                for section, values in sections.items()), encoding='utf-8')
        return path

    def command(self, settings: Dict[str, object], *extra: str) -> List[str]:
        self.runs += 1
        config = self.ini({'LogDir': self.folder / 'log', **settings})
        report = self.folder / f'report{self.runs}.json'
        return [sys.executable, str(TOOL), '--nogui', '--config', str(config), '--report', str(report), *extra]

    def run(self, settings: Dict[str, object], *extra: str, timeout: float = 300) -> Run:
        command = self.command(settings, *extra)
        report = Path(command[command.index('--report') + 1])
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=self.folder,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        data = json.loads(report.read_text()) if report.exists() else None
        return Run(done.returncode, done.stdout, done.stderr, data)

    def start(self, settings: Dict[str, object], *extra: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(settings, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env, cwd=self.folder, stdin=subprocess.DEVNULL)


@pytest.fixture
def tool(tmp_path, tool_env) -> Tool:
    folder = tmp_path / 'run'
    folder.mkdir()
    return Tool(folder, tool_env)


def write_tree(root: Path, files: Dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (fast: repeated hashing)."""
    import random
    return random.Random(seed).randbytes(size)


def bucket_contents(server: S3Server, bucket: str, prefix: str = '') -> Dict[str, bytes]:
    client = server.client()
    out = {}
    for page in client.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get('Contents', ()):
            out[item['Key']] = client.get_object(Bucket=bucket, Key=item['Key'])['Body'].read()
    return out


def unfinished_uploads(server: S3Server, bucket: str) -> List[dict]:
    return server.client().list_multipart_uploads(Bucket=bucket).get('Uploads', [])


def leftover_upload(server: S3Server, bucket: str, key: str, parts: Dict[int, bytes]) -> str:
    """An unfinished multipart upload of key holding these parts (number -> body), as another run leaves it."""
    client = server.client()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)['UploadId']
    for number, body in parts.items():
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
    return upload_id


def parts_of(server: S3Server, bucket: str, key: str) -> List[dict]:
    """Parts of the newest unfinished upload of key ([] if none, or if it just finished)."""
    client = server.client()
    try:
        uploads = [u for u in client.list_multipart_uploads(Bucket=bucket, Prefix=key).get('Uploads', [])
                   if u['Key'] == key]
        if not uploads:
            return []
        newest = max(uploads, key=lambda u: u['Initiated'])
        return client.list_parts(Bucket=bucket, Key=key, UploadId=newest['UploadId']).get('Parts', [])
    except client.exceptions.NoSuchUpload:
        return []


def wait_for_parts(server: S3Server, bucket: str, key: str, count: int, timeout: float = 60) -> List[dict]:
    """Poll until the upload of key holds at least count parts."""
    deadline = time.time() + timeout
    parts: List[dict] = []
    while len(parts) < count and time.time() < deadline:
        parts = parts_of(server, bucket, key)
        time.sleep(0.05)
    return parts


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def dest_settings(server: S3Server, bucket: str, **more: object) -> Dict[str, object]:
    """Settings for a LOCAL_TO_S3 job into bucket on server (callers add SrcDir etc.)."""
    return {'JobType': 'LOCAL_TO_S3', 'DesProfileName': server.profile, 'DesEndPointURL': server.endpoint,
            'DesBucket': bucket, **more}


def s3_to_s3(src: S3Server, src_bucket: str, dst: S3Server, dst_bucket: str, **more: object) -> Dict[str, object]:
    """Settings for an S3_TO_S3 job from a bucket on one server (its own credentials) to one on another."""
    return {'JobType': 'S3_TO_S3', 'SrcProfileName': src.profile, 'SrcEndPointURL': src.endpoint,
            'SrcBucket': src_bucket, 'DesProfileName': dst.profile, 'DesEndPointURL': dst.endpoint,
            'DesBucket': dst_bucket, **more}


# The worker fleet: a local AWS stack (moto) and data on SeaweedFS ###################################

class Stack:
    """A queue (with a dead-letter queue), a status table name and buckets for one test."""

    def __init__(self, moto, seaweed, tool, max_receive: int = 2) -> None:
        self.moto, self.seaweed, self.tool = moto, seaweed, tool
        self.sqs = self.aws('sqs')
        self.dynamodb = self.aws('dynamodb')
        name = uuid.uuid4().hex[:10]
        self.dlq_url = self.sqs.create_queue(QueueName=f'dlq-{name}')['QueueUrl']
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=['QueueArn'])['Attributes']['QueueArn']
        self.queue_url = self.sqs.create_queue(QueueName=f'jobs-{name}', Attributes={
            'RedrivePolicy': json.dumps({'deadLetterTargetArn': dlq_arn, 'maxReceiveCount': str(max_receive)})})['QueueUrl']
        self.table = f'status-{name}'
        self.parameter = f'/s3upload/{name}/source-keys'
        self.aws('ssm').put_parameter(Name=self.parameter, Type='SecureString', Value=json.dumps(
            {'aws_access_key_id': SOURCE_KEY, 'aws_secret_access_key': SOURCE_SECRET, 'region': 'us-east-1'}))
        self.src = seaweed.bucket('src')
        self.dst = seaweed.bucket('dst')

    def aws(self, service: str):
        return boto3.client(service, endpoint_url=self.moto.endpoint, region_name='us-east-1',
                            aws_access_key_id=self.moto.access_key, aws_secret_access_key=self.moto.secret_key)

    def settings(self, **more) -> dict:
        return {'JobType': 'S3_TO_S3', 'SrcProfileName': 'wrong_keys',    # the SSM parameter's keys are used
                'SrcEndPointURL': self.seaweed.endpoint, 'SrcBucket': self.src, 'SrcPrefix': 'data',
                'DesProfileName': self.seaweed.profile, 'DesEndPointURL': self.seaweed.endpoint, 'DesBucket': self.dst,
                'S3Prefix': 'copy', 'SqsQueueUrl': self.queue_url, 'StatusTable': self.table,
                'ClusterProfileName': self.moto.profile, 'ClusterRegion': 'us-east-1',
                'SqsEndpointURL': self.moto.endpoint, 'DynamoDBEndpointURL': self.moto.endpoint,
                'SsmEndpointURL': self.moto.endpoint, 'CloudWatchEndpointURL': self.moto.endpoint,
                'CredentialsParameter': self.parameter, 'CredentialsFor': 'Src',
                'VisibilityTimeout': 6, 'PollSeconds': 1, **SMALL_PARTS, 'LogDir': self.tool.folder / 'log', **more}

    def command(self, subcommand: str, *extra: str, name: str = 'cluster.ini', **more) -> list:
        ini = self.tool.ini(self.settings(**more), name)
        return [sys.executable, str(CLUSTER), subcommand, '--config', str(ini), *extra]

    def run(self, subcommand: str, *extra: str, timeout: float = 240, **more) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(subcommand, *extra, **more), capture_output=True, text=True,
                              env=self.tool.env, cwd=self.tool.folder, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self, subcommand: str, *extra: str, name: str = 'cluster.ini', **more) -> subprocess.Popen:
        return subprocess.Popen(self.command(subcommand, *extra, name=name, **more), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.tool.env, cwd=self.tool.folder)

    def put_sources(self, objects: dict) -> None:
        client = self.seaweed.client()
        for key, data in objects.items():
            client.put_object(Bucket=self.src, Key=key, Body=data)

    def send(self, *bodies: str) -> None:
        for body in bodies:
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def depth(self, url: str) -> int:
        counts = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=['All'])['Attributes']
        return int(counts['ApproximateNumberOfMessages']) + int(counts['ApproximateNumberOfMessagesNotVisible'])

    def items(self) -> dict:
        out = {}
        for page in self.dynamodb.get_paginator('scan').paginate(TableName=self.table):
            for item in page['Items']:
                name = item['object']['S']
                if not name.startswith(('upload#', 'jobsender#')):
                    out[name] = {k: v.get('S', v.get('N')) for k, v in item.items()}
        return out


@pytest.fixture
def stack(moto, seaweed, tool) -> Stack:
    return Stack(moto, seaweed, tool)


def copied(stack: Stack, objects: dict) -> dict:
    return {'copy/' + key[len('data/'):]: data for key, data in objects.items()}


class FakeContext:
    """What Lambda passes: the time left before the invocation is cut off."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)

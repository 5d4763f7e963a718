"""S3 -> Google Cloud Storage (the seeds' 3GSync) through a front that speaks GCS's XML API where it differs
from S3 (tests/gcs_front.py, each difference cited there): single-part and multipart objects, a multipart
upload resumed after a kill, storage classes, and the seeds' credentials JSON (SSM, GCP Secret Manager)."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import (GCS_KEY, GCS_SECRET, MiB, SMALL_PARTS, SOURCE_KEY, SOURCE_SECRET, bucket_contents, dest_settings,
                      random_bytes, s3_to_s3, wait_for_parts, write_tree)


def gcs_client(gcs):
    import boto3
    import botocore.config
    return boto3.client('s3', endpoint_url=gcs.endpoint, region_name='auto', aws_access_key_id=GCS_KEY,
                        aws_secret_access_key=GCS_SECRET, config=botocore.config.Config(s3={'addressing_style': 'path'}))


def to_gcs(seaweed, src_bucket: str, gcs, **more) -> dict:
    return {**s3_to_s3(seaweed, src_bucket, seaweed, gcs.bucket), 'DesProfileName': 'gcs',
            'DesEndPointURL': gcs.endpoint, **more}


def test_s3_to_gcs_single_and_multipart_objects_and_a_resume_after_a_kill(seaweed, gcs, tool):
    source = seaweed.bucket('src')
    objects = {'small.txt': b'small object' * 100, 'big.bin': random_bytes(26 * MiB, 1)}
    client = seaweed.client()
    for key, body in objects.items():
        client.put_object(Bucket=source, Key=key, Body=body)
    settings = to_gcs(seaweed, source, gcs, SrcPrefix='', **SMALL_PARTS, StorageClass='STANDARD_IA')
    running = tool.start({**settings, 'BandwidthLimit': 4, 'MaxThread': 2})
    wait_for_parts(seaweed, gcs.bucket, 'big.bin', 2)
    running.send_signal(signal.SIGKILL)
    running.wait()
    finished = tool.run(settings)
    assert finished.code == 0, finished.stderr[-3000:]
    assert 'already there' in finished.stderr                            # resumed from the parts GCS kept
    assert bucket_contents(seaweed, gcs.bucket) == objects
    assert gcs.copy_requests == []                                       # no UploadPartCopy across providers
    assert {gcs.classes[f'{gcs.bucket}/{key}'] for key in objects} == {'NEARLINE'}
    assert 'written as NEARLINE on Google Cloud Storage' in finished.stderr
    answer = gcs_client(gcs).head_object(Bucket=gcs.bucket, Key='big.bin')
    assert not answer['ETag'].strip('"').endswith('-6') and answer['StorageClass'] == 'NEARLINE'
    assert finished.report['files_failed'] == 0 and not seaweed.client().list_multipart_uploads(
        Bucket=gcs.bucket).get('Uploads')


def test_gcs_storage_class_names_are_written_and_refused_elsewhere(seaweed, gcs, tool, tmp_path):
    folder = write_tree(tmp_path / 'src', {'cold.txt': b'c' * 1000, 'many/x.bin': random_bytes(6 * MiB, 4)})
    ran = tool.run({'JobType': 'LOCAL_TO_S3', 'SrcDir': folder, 'DesProfileName': 'gcs', 'DesEndPointURL': gcs.endpoint,
                    'DesBucket': gcs.bucket, 'StorageClass': 'COLDLINE', **SMALL_PARTS})
    assert ran.code == 0, ran.stderr[-3000:]
    assert {gcs.classes[f'{gcs.bucket}/{key}'] for key in ('cold.txt', 'many/x.bin')} == {'COLDLINE'}
    elsewhere = tool.run(dest_settings(seaweed, seaweed.bucket('s3'), SrcDir=folder, StorageClass='NEARLINE'))
    assert elsewhere.code == 2 and 'NEARLINE is a Google Cloud Storage class' in elsewhere.stderr
    assert 'Traceback' not in elsewhere.stderr


def test_3gsync_credentials_json_from_ssm_gives_each_side_its_keys(stack, gcs):
    parameter = f'/s3upload/{uuid.uuid4().hex[:8]}/3gsync'
    stack.aws('ssm').put_parameter(Name=parameter, Type='SecureString', Value=json.dumps({
        'source': {'aws_access_key_id': SOURCE_KEY, 'aws_secret_access_key': SOURCE_SECRET, 'region': 'us-east-1'},
        'destination': {'aws_access_key_id': GCS_KEY, 'aws_secret_access_key': GCS_SECRET, 'region': 'auto'}}))
    stack.put_sources({'data/g/one.txt': b'one' * 10, 'data/g/two.bin': random_bytes(6 * MiB, 2)})
    settings = dict(CredentialsParameter=parameter, SrcProfileName='wrong_keys', DesProfileName='wrong_keys',
                    DesEndPointURL=gcs.endpoint, DesBucket=gcs.bucket)
    assert stack.run('jobsender', **settings).returncode == 0
    ran = stack.run('worker', '--once', timeout=120, **settings)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert bucket_contents(stack.seaweed, gcs.bucket) == {'copy/g/one.txt': b'one' * 10,
                                                         'copy/g/two.bin': random_bytes(6 * MiB, 2)}


class GoogleMetadataAndSecrets:
    """The GCE metadata server's token endpoint and Secret Manager's access endpoint, on 127.0.0.1."""

    def __init__(self, secrets: dict) -> None:
        self.asked = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(handler):
                self.asked.append(handler.path)
                if handler.path.endswith('/service-accounts/default/token'):
                    ok = handler.headers.get('Metadata-Flavor') == 'Google'
                    body = {'access_token': 'ya29.test-token', 'expires_in': 3599, 'token_type': 'Bearer'}
                elif handler.path.startswith('/v1/') and handler.path.endswith(':access'):
                    ok = handler.headers.get('Authorization') == 'Bearer ya29.test-token'
                    name = handler.path[len('/v1/'):-len(':access')]
                    ok = ok and name in secrets
                    body = {'name': name, 'payload': {'data': base64.b64encode(secrets.get(name, '').encode()).decode()}}
                else:
                    ok, body = False, {}
                data = json.dumps(body).encode()
                handler.send_response(200 if ok else 403)
                handler.send_header('Content-Length', str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.address = f'127.0.0.1:{self.server.server_address[1]}'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_3gsync_get_mode_reads_both_sides_keys_from_gcp_secret_manager_on_gce(stack, gcs):
    secret = 'projects/my-project/secrets/s3-migration/versions/latest'
    google = GoogleMetadataAndSecrets({secret: json.dumps({
        'source': {'aws_access_key_id': SOURCE_KEY, 'aws_secret_access_key': SOURCE_SECRET, 'region': 'us-east-1'},
        'destination': {'aws_access_key_id': GCS_KEY, 'aws_secret_access_key': GCS_SECRET, 'region': 'auto'}})})
    stack.tool.env['GCE_METADATA_HOST'] = google.address
    stack.put_sources({'data/s/x.txt': b'from S3 to GCS'})
    stack.send(json.dumps({'Src_bucket': stack.src, 'Src_key': 'data/s/x.txt', 'Des_bucket': gcs.bucket,
                           'Des_key': 'copy/s/x.txt', 'Size': 14}))
    started = time.monotonic()
    ran = stack.run('worker', '--once', timeout=60, CredentialsParameter=secret.rsplit('/versions/', 1)[0],
                    SecretManagerEndpointURL=f'http://{google.address}', SrcProfileName='wrong_keys',
                    DesProfileName='wrong_keys', DesEndPointURL=gcs.endpoint, StatusTable='')
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert bucket_contents(stack.seaweed, gcs.bucket) == {'copy/s/x.txt': b'from S3 to GCS'}
    assert any(path.endswith(':access') for path in google.asked) and time.monotonic() - started < 60
    assert GCS_SECRET not in ran.stderr and SOURCE_SECRET not in ran.stderr

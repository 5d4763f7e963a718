"""The seeds' serverless and event-driven system around the fleet, against moto in server mode (S3 with
bucket notifications to its SQS, SQS, DynamoDB, SSM) and SeaweedFS: Lambda slices back to back, S3 events
wired by `triggers`, Jobsender over many bucket pairs (also as a scheduled Lambda that goes on where it
stopped), object versions, S3 Inventory as the job list, the ignore list everywhere, and the original
cluster ini and Lambda environment.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import signal
import time
import uuid
from urllib.parse import quote_plus


from conftest import MiB, FakeContext, Stack, bucket_contents, copied, random_bytes, wait_for_parts


def lambda_environment(stack: Stack, monkeypatch, **settings) -> None:
    """The Lambda's environment: the test's AWS files, and an ini of these settings as S3_UPLOAD_CONFIG."""
    for key, value in stack.tool.env.items():
        if key.startswith('AWS_'):
            monkeypatch.setenv(key, value)
    ini = stack.tool.ini(stack.settings(**settings), f'lambda-{uuid.uuid4().hex[:6]}.ini')
    monkeypatch.setenv('S3_UPLOAD_CONFIG', str(ini))


def sqs_record(message: dict, queue_arn: str) -> dict:
    """An SQS message as the Lambda service hands it to the function."""
    return {'messageId': message['MessageId'], 'receiptHandle': message['ReceiptHandle'], 'body': message['Body'],
            'attributes': message.get('Attributes', {}), 'eventSource': 'aws:sqs', 'eventSourceARN': queue_arn}


def queue_arn(stack: Stack, url: str) -> str:
    return stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=['QueueArn'])['Attributes']['QueueArn']


def receive(stack: Stack, url: str, wait: int = 10) -> list:
    return stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
                                     AttributeNames=['All']).get('Messages', [])


# Lambda slices back to back #######################################################################

def test_an_object_needing_several_lambda_slices_takes_about_the_sum_of_its_slices(stack, monkeypatch):
    import s3_upload_cluster
    data = random_bytes(30 * MiB, 28)
    stack.put_sources({'data/huge.bin': data})
    # A queue as deploy/lambda.yaml makes it: a message not handed back stays hidden for 90 minutes.
    url = stack.sqs.create_queue(QueueName=f'slow-{uuid.uuid4().hex[:8]}',
                                 Attributes={'VisibilityTimeout': '5400'})['QueueUrl']
    assert stack.run('jobsender', '--dry-run').returncode == 0          # creates the status table
    lambda_environment(stack, monkeypatch, SqsQueueUrl='', BandwidthLimit=2, StopBeforeTimeout=1, MaxThread=2)
    job = {'Src_bucket': stack.src, 'Src_key': 'data/huge.bin', 'Des_bucket': stack.dst, 'Des_key': 'copy/huge.bin',
           'Size': len(data), 'versionId': ''}
    stack.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(job))
    slices, gaps, started = [], [], time.monotonic()
    while True:
        asked = time.monotonic()
        [message] = receive(stack, url)
        if slices:
            gaps.append(time.monotonic() - asked)
        began = time.monotonic()
        answer = s3_upload_cluster.lambda_handler({'Records': [sqs_record(message, queue_arn(stack, url))]},
                                                  FakeContext(4))
        slices.append(time.monotonic() - began)
        if answer == {'batchItemFailures': []}:
            stack.sqs.delete_message(QueueUrl=url, ReceiptHandle=message['ReceiptHandle'])   # as Lambda does
            break
        assert answer == {'batchItemFailures': [{'itemIdentifier': message['MessageId']}]}
        assert len(slices) < 20
    wall = time.monotonic() - started
    assert len(slices) >= 3, slices
    assert max(gaps) < 3, gaps                       # received again within seconds of each stop, not 90 minutes
    assert wall < sum(slices) + 3 * len(gaps), (wall, slices)
    assert bucket_contents(stack.seaweed, stack.dst) == {'copy/huge.bin': data}
    assert stack.items()[f'{stack.dst}/copy/huge.bin']['state'] == 'done'


# S3 events wired by `triggers` ###################################################################

def test_triggers_add_keeps_existing_notifications_and_new_objects_are_copied(stack, tmp_path):
    s3 = stack.aws('s3')
    source = f'events-{uuid.uuid4().hex[:8]}'
    s3.create_bucket(Bucket=source)
    other_url = stack.sqs.create_queue(QueueName=f'other-{uuid.uuid4().hex[:8]}')['QueueUrl']
    existing = {'Id': 'theirs', 'QueueArn': queue_arn(stack, other_url), 'Events': ['s3:ObjectRemoved:*']}
    s3.put_bucket_notification_configuration(Bucket=source, NotificationConfiguration={'QueueConfigurations': [existing]})
    prefixes = tmp_path / 'prefix_list.txt'
    prefixes.write_text('data/in/\n# comment\n\ndata/more/\n')
    settings = dict(SrcBucket=source, SrcEndPointURL=stack.moto.endpoint, SrcProfileName=stack.moto.profile,
                    CredentialsParameter='', StatusTable='')
    added = stack.run('triggers', 'add', '--prefixes', str(prefixes), **settings)
    assert added.returncode == 0, added.stderr
    assert added.stdout.count('added:') == 2
    again = stack.run('triggers', 'add', '--prefixes', str(prefixes), **settings)
    assert again.returncode == 0 and again.stdout.count('already there') == 2
    listed = stack.run('triggers', 'list', **settings)
    assert listed.returncode == 0
    assert 'prefix=data/in/' in listed.stdout and 'prefix=data/more/' in listed.stdout
    assert 's3:ObjectRemoved:*' in listed.stdout                     # theirs is still there
    configuration = s3.get_bucket_notification_configuration(Bucket=source)['QueueConfigurations']
    assert existing in configuration and len(configuration) == 3
    objects = {'data/in/a b+c.txt': b'alpha' * 100, 'data/more/ünï %.bin': random_bytes(7 * MiB, 3),
               'data/elsewhere.txt': b'not wired'}
    for key, body in objects.items():
        s3.put_object(Bucket=source, Key=key, Body=body)
    ran = stack.run('worker', '--once', timeout=120, **settings)
    assert ran.returncode == 0, ran.stderr[-3000:]
    wired = {key: body for key, body in objects.items() if not key.startswith('data/elsewhere')}
    assert bucket_contents(stack.seaweed, stack.dst) == copied(stack, wired)


def test_triggers_add_refuses_a_missing_prefix_file_in_one_line(stack, tmp_path):
    ran = stack.run('triggers', 'add', '--prefixes', str(tmp_path / 'none.txt'), StatusTable='')
    assert ran.returncode == 2 and 'cannot read --prefixes' in ran.stderr and 'Traceback' not in ran.stderr


# Jobsender for many bucket pairs, scheduled #######################################################

def test_jobsender_compares_every_pair_of_the_ssm_parameter_and_reports_the_one_it_cannot_list(stack):
    second = stack.seaweed.bucket('src2')
    stack.put_sources({'data/one.txt': b'1' * 10, 'data/two.txt': b'2' * 20})
    stack.seaweed.client().put_object(Bucket=second, Key='logs/three.txt', Body=b'3' * 30)
    parameter = f'/s3upload/{uuid.uuid4().hex[:8]}/pairs'
    pairs = [{'src_bucket': stack.src, 'src_prefix': 'data', 'des_bucket': stack.dst, 'des_prefix': 'a'},
             {'src_bucket': 'no-such-bucket-here', 'src_prefix': '', 'des_bucket': stack.dst, 'des_prefix': 'x'},
             {'src_bucket': second, 'src_prefix': 'logs/', 'des_bucket': stack.dst, 'des_prefix': 'b/'}]
    stack.aws('ssm').put_parameter(Name=parameter, Type='String', Value=json.dumps(pairs))
    sent = stack.run('jobsender', SrcBucket='', BucketPairsParameter=parameter, CredentialsParameter='',
                     SrcProfileName=stack.seaweed.profile)
    assert sent.returncode == 1
    assert 'no-such-bucket-here' in sent.stderr and '3 queued' in sent.stderr and '1 pairs failed' in sent.stderr
    ran = stack.run('worker', '--once', timeout=120, CredentialsParameter='', SrcProfileName=stack.seaweed.profile)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert bucket_contents(stack.seaweed, stack.dst) == {'a/one.txt': b'1' * 10, 'a/two.txt': b'2' * 20,
                                                         'b/three.txt': b'3' * 30}


class CountdownContext:
    """A Lambda context whose time runs out after a number of looks at the clock."""

    def __init__(self, looks: int) -> None:
        self.looks = looks

    def get_remaining_time_in_millis(self) -> int:
        self.looks -= 1
        return 600_000 if self.looks > 0 else 0


def test_scheduled_jobsender_stops_for_time_and_the_next_run_goes_on_where_it_stopped(stack, monkeypatch):
    import s3_upload_cluster
    objects = {f'data/f{n:03}.txt': str(n).encode() * 3 for n in range(40)}
    stack.put_sources(objects)
    assert stack.run('jobsender', '--dry-run').returncode == 0          # creates the status table
    lambda_environment(stack, monkeypatch, ListPageSize=7)
    first = s3_upload_cluster.jobsender_handler({}, CountdownContext(16))
    assert first['unfinished'] == 1 and 0 < first['listed'] < 40 and first['queued'] == first['listed']
    second = s3_upload_cluster.jobsender_handler({}, FakeContext(600))
    assert second['unfinished'] == 0
    assert second['listed'] == 40 - first['listed']                  # it went on after the last key handled
    assert second['queued'] + first['queued'] == 40 and second['already_queued'] == 0
    third = s3_upload_cluster.jobsender_handler({}, FakeContext(600))
    assert third['listed'] == 40 and third['queued'] == 0             # a finished listing starts over next time
    bodies = []
    while True:
        messages = receive(stack, stack.queue_url, wait=1)
        if not messages:
            break
        bodies += [json.loads(m['Body'])['Src_key'] for m in messages]
    assert sorted(bodies) == sorted(objects)                         # each object queued once


# Object versions ##################################################################################

def test_versions_the_queued_version_arrives_even_when_overwritten_before_and_during_the_copy(stack):
    s3 = stack.aws('s3')
    source = f'versioned-{uuid.uuid4().hex[:8]}'
    s3.create_bucket(Bucket=source)
    s3.put_bucket_versioning(Bucket=source, VersioningConfiguration={'Status': 'Enabled'})
    small, big = b'first small version', random_bytes(16 * MiB, 41)
    first = {key: s3.put_object(Bucket=source, Key=key, Body=body)['VersionId']
             for key, body in (('data/small.txt', small), ('data/big.bin', big))}
    settings = dict(SrcBucket=source, SrcEndPointURL=stack.moto.endpoint, SrcProfileName=stack.moto.profile,
                    CredentialsParameter='', JobsenderCompareVersionId=True, GetObjectWithVersionId=True)
    sent = stack.run('jobsender', **settings)
    assert sent.returncode == 0 and '2 queued' in sent.stderr, sent.stderr
    s3.put_object(Bucket=source, Key='data/small.txt', Body=b'overwritten after jobsender')
    s3.put_object(Bucket=source, Key='data/big.bin', Body=random_bytes(16 * MiB, 42))
    worker = stack.start('worker', **settings, BandwidthLimit=3, MaxParallelFile=1, MaxThread=2)
    wait_for_parts(stack.seaweed, stack.dst, 'copy/big.bin', 1, timeout=60)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    latest = s3.put_object(Bucket=source, Key='data/big.bin', Body=random_bytes(16 * MiB, 43))['VersionId']
    ran = stack.run('worker', '--once', timeout=180, **settings)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert bucket_contents(stack.seaweed, stack.dst) == {'copy/small.txt': small, 'copy/big.bin': big}
    items = stack.items()
    assert {key: items[f'{stack.dst}/copy/{key[5:]}']['version_id'] for key in first} == first
    again = stack.run('jobsender', **settings)        # the recorded versions are no longer the current ones
    assert again.returncode == 0 and '2 queued' in again.stderr, again.stderr
    assert latest not in first.values()


def test_update_version_id_records_the_version_a_job_without_one_copied(stack):
    s3 = stack.aws('s3')
    source = f'versioned-{uuid.uuid4().hex[:8]}'
    s3.create_bucket(Bucket=source)
    s3.put_bucket_versioning(Bucket=source, VersioningConfiguration={'Status': 'Enabled'})
    version = s3.put_object(Bucket=source, Key='data/x.txt', Body=b'x' * 100)['VersionId']
    stack.send(json.dumps({'Src_bucket': source, 'Src_key': 'data/x.txt', 'Des_bucket': stack.dst,
                           'Des_key': 'copy/x.txt', 'Size': 100, 'versionId': 'null'}))
    assert stack.run('jobsender', '--dry-run').returncode == 0
    ran = stack.run('worker', '--once', timeout=60, SrcEndPointURL=stack.moto.endpoint, CredentialsParameter='',
                    SrcProfileName=stack.moto.profile, UpdateVersionId=True, GetObjectWithVersionId=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert stack.items()[f'{stack.dst}/copy/x.txt']['version_id'] == version


def test_a_refused_version_read_names_the_switch_to_turn_off():
    import botocore.exceptions
    from s3_upload import S3Source, SourceObject
    denied = botocore.exceptions.ClientError({'Error': {'Code': 'AccessDenied', 'Message': 'Access Denied'}}, 'GetObject')
    error = S3Source._translate(denied, SourceObject('k', 1, '"e"', 'k', version_id='v1'))
    assert 'GetObjectWithVersionId = False' in str(error) and 's3:GetObjectVersion' in str(error)


# S3 Inventory as the job list #####################################################################

INVENTORY_SCHEMA = 'Bucket, Key, Size, LastModifiedDate, ETag, StorageClass'


def inventory_file(bucket: str, rows: list) -> bytes:
    """One gzipped CSV file of an inventory report as AWS writes it: quoted fields, keys URL-encoded."""
    text = ''.join(f'"{bucket}","{quote_plus(key)}","{size}","2026-11-30T00:00:00.000Z","{etag}","STANDARD"\n'
                   for key, size, etag in rows)
    return gzip.compress(text.encode())


def put_inventory(stack: Stack, source: str, files: list, wrong_md5: bool = False) -> str:
    """Upload inventory files and their manifest.json to an inventory bucket; the manifest's s3:// URL."""
    client = stack.seaweed.client()
    bucket = stack.seaweed.bucket('inventory')
    entries = []
    for number, data in enumerate(files):
        key = f'inv/{source}/config/data/{uuid.uuid4()}.csv.gz'
        client.put_object(Bucket=bucket, Key=key, Body=data)
        digest = hashlib.md5(data).hexdigest()
        entries.append({'key': key, 'size': len(data), 'MD5checksum': '0' * 32 if wrong_md5 and number else digest})
    manifest = {'sourceBucket': source, 'destinationBucket': f'arn:aws:s3:::{bucket}', 'version': '2016-11-30',
                'creationTimestamp': '1764460800000', 'fileFormat': 'CSV', 'fileSchema': INVENTORY_SCHEMA,
                'files': entries}
    client.put_object(Bucket=bucket, Key=f'inv/{source}/config/2026-11-30T00-00Z/manifest.json',
                      Body=json.dumps(manifest).encode())
    return f's3://{bucket}/inv/{source}/config/2026-11-30T00-00Z/manifest.json'


def test_inventory_jobs_are_exactly_the_missing_and_different_objects(stack):
    keys = ['data/a+b.txt', 'data/100% sure.txt', 'data/with space/x.bin', 'data/ünïcödé/日本.txt',
            'data/same.txt', 'data/changed.txt', 'data/zz-last.txt']
    objects = {key: key.encode() * (n + 2) for n, key in enumerate(keys)}
    stack.put_sources({**objects, 'data/not-in-inventory.txt': b'the source is not listed'})
    at_destination = stack.seaweed.client()
    at_destination.put_object(Bucket=stack.dst, Key='copy/same.txt', Body=objects['data/same.txt'])
    at_destination.put_object(Bucket=stack.dst, Key='copy/changed.txt', Body=b'older and shorter')
    rows = [(key, len(body), hashlib.md5(body).hexdigest()) for key, body in objects.items()]
    # two files, the second out of key order against the first, and a row outside SrcPrefix
    files = [inventory_file(stack.src, sorted(rows)[3:]), inventory_file(stack.src, sorted(rows)[:3] + [('else/x', 1, 'e')])]
    manifest = put_inventory(stack, stack.src, files)
    sent = stack.run('jobsender', '--inventory', manifest)
    assert sent.returncode == 0, sent.stderr
    assert '7 listed, 6 queued, 1 at destination' in sent.stderr
    ran = stack.run('worker', '--once', timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert bucket_contents(stack.seaweed, stack.dst) == copied(stack, objects)


def test_an_inventory_file_whose_md5_differs_from_the_manifest_is_refused_and_nothing_is_queued(stack):
    stack.put_sources({'data/a.txt': b'a'})
    files = [inventory_file(stack.src, [('data/a.txt', 1, 'e')]), inventory_file(stack.src, [('data/b.txt', 1, 'e')])]
    sent = stack.run('jobsender', '--inventory', put_inventory(stack, stack.src, files, wrong_md5=True))
    assert sent.returncode == 2 and 'MD5' in sent.stderr and 'nothing was queued' in sent.stderr
    assert 'Traceback' not in sent.stderr and stack.depth(stack.queue_url) == 0


def test_an_inventory_is_read_in_bounded_memory(stack, monkeypatch):
    import os
    import tracemalloc
    from s3_upload_cluster import Cluster, JobSender, load_config
    peaks = {}
    for lines in (10_000, 100_000):
        rows = ((f'data/{n:09}/{"x" * 40}.bin', n, 'e' * 32) for n in range(lines))
        manifest = put_inventory(stack, stack.src, [inventory_file(stack.src, list(rows))])
        for key, value in stack.tool.env.items():
            if key.startswith('AWS_'):
                monkeypatch.setenv(key, value)
        config = load_config(str(stack.tool.ini(stack.settings(), 'memory.ini')), {}, {})
        with open(os.devnull, 'w') as nowhere:
            sender = JobSender(config, Cluster(config), dry_run=True, out=nowhere)
            tracemalloc.start()
            counts = sender.run(inventory=manifest)
            peaks[lines] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert counts['queued'] == lines
    assert peaks[100_000] < peaks[10_000] + 4 * MiB, peaks             # ten times the lines, not ten times the memory


# The ignore list everywhere #######################################################################

def test_the_ignore_list_in_ssm_skips_s3_event_jobs_and_is_read_again_when_it_changes(stack, monkeypatch):
    import s3_upload_cluster
    objects = {'data/ev/keep.txt': b'keep', 'data/ev/skip.tmp': b'skip', 'data/ev/later.log': b'later'}
    stack.put_sources(objects)
    parameter = f'/s3upload/{uuid.uuid4().hex[:8]}/ignore'
    ssm = stack.aws('ssm')
    ssm.put_parameter(Name=parameter, Type='String', Value=f'# ours\n*.tmp\n{stack.src}/data/ev/later.*\n')
    assert stack.run('jobsender', '--dry-run').returncode == 0
    lambda_environment(stack, monkeypatch, IgnoreListParameter=parameter)

    def event_for(*keys):
        records = [{'eventName': 'ObjectCreated:Put', 's3': {'bucket': {'name': stack.src},
                                                             'object': {'key': quote_plus(key), 'size': 4}}}
                   for key in keys]
        return {'Records': [{'messageId': 'm-1', 'receiptHandle': 'r-1', 'body': json.dumps({'Records': records})}]}
    answer = s3_upload_cluster.lambda_handler(event_for(*objects), FakeContext(300))
    assert answer == {'batchItemFailures': []}                        # done: the skipped jobs' message is deleted
    assert bucket_contents(stack.seaweed, stack.dst) == {'copy/ev/keep.txt': b'keep'}
    ssm.put_parameter(Name=parameter, Type='String', Value='*.tmp\n', Overwrite=True)
    assert s3_upload_cluster.lambda_handler(event_for('data/ev/later.log'), FakeContext(300)) == {'batchItemFailures': []}
    assert bucket_contents(stack.seaweed, stack.dst) == {'copy/ev/keep.txt': b'keep', 'copy/ev/later.log': b'later'}


def test_workers_count_ignored_jobs_as_excluded(stack, tmp_path):
    stack.put_sources({'data/w/a.txt': b'a', 'data/w/b.skip': b'b'})
    ignore = tmp_path / 'ignore.txt'
    ignore.write_text('*.skip\n')
    for key in ('data/w/a.txt', 'data/w/b.skip'):
        stack.send(json.dumps({'Src_bucket': stack.src, 'Src_key': key, 'Des_bucket': stack.dst,
                               'Des_key': 'copy/' + key[5:], 'Size': 1}))
    report = tmp_path / 'report.json'
    ran = stack.run('worker', '--once', '--report', str(report), timeout=60, StatusTable='', IgnoreListFile=ignore)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert bucket_contents(stack.seaweed, stack.dst) == {'copy/w/a.txt': b'a'}
    assert json.loads(report.read_text())['files_excluded'] == 1
    assert stack.depth(stack.queue_url) == 0


# The original configuration as a drop-in ##########################################################

def original_cluster_ini(stack: Stack, name: str, pairs_parameter: str, clean: str = 'False') -> str:
    """The original s3_migration_cluster_config.ini as the seeds ship it (GET: this machine is in the
    destination's account, the parameter holds the source's keys), plus where the local stack is."""
    return f"""; configure file for s3_migration_cluster master and worker nodes
[Basic]
JobType = GET
# JobType = PUT | GET
table_queue_name = {name}
sqs_queue_name = {name}
ssm_parameter_bucket = {pairs_parameter}
ssm_parameter_credentials = {stack.parameter}
Des_bucket_default = {stack.dst}
Des_prefix_default = events/
DesEndPointURL = {stack.seaweed.endpoint}
DesProfileName = {stack.seaweed.profile}

[Mode]
StorageClass = STANDARD
ResumableThreshold = 5
MaxRetry = 20
MaxThread = 20
MaxParallelFile = 5
JobTimeout = 3500
JobsenderCompareVersionId = False
UpdateVersionId = False
GetObjectWithVersionId = False

[Debug]
CleanUnfinishedUpload = {clean}
LoggingLevel = INFO
LocalProfileMode = False
ifVerifyMD5Twice = False
ChunkSize = 5
LogDir = {stack.tool.folder / 'log'}

[S3_TO_S3]
SrcEndPointURL = {stack.seaweed.endpoint}

[Cluster]
SqsEndpointURL = {stack.moto.endpoint}
DynamoDBEndpointURL = {stack.moto.endpoint}
SsmEndpointURL = {stack.moto.endpoint}
CloudWatchEndpointURL = {stack.moto.endpoint}
ClusterProfileName = {stack.moto.profile}
ClusterRegion = us-east-1
PollSeconds = 1
VisibilityTimeout = 6
"""


def test_the_original_cluster_ini_runs_jobsender_and_worker_unchanged(stack):
    import subprocess
    import sys
    from conftest import CLUSTER
    name = f'original-{uuid.uuid4().hex[:8]}'
    stack.sqs.create_queue(QueueName=name)
    stack.dynamodb.create_table(TableName=name, BillingMode='PAY_PER_REQUEST',   # the original table's key is "Key"
                                KeySchema=[{'AttributeName': 'Key', 'KeyType': 'HASH'}],
                                AttributeDefinitions=[{'AttributeName': 'Key', 'AttributeType': 'S'}])
    pairs = f'/s3upload/{name}/buckets'
    stack.aws('ssm').put_parameter(Name=pairs, Type='String', Value=json.dumps(
        [{'src_bucket': stack.src, 'src_prefix': 'data', 'des_bucket': stack.dst, 'des_prefix': 'orig'}]))
    stack.put_sources({'data/o1.txt': b'one', 'data/sub/o2.bin': random_bytes(6 * MiB, 5)})
    ini = stack.tool.folder / 's3_migration_cluster_config.ini'
    # GET: the machine is in the destination's account; the parameter holds the source's keys
    ini.write_text(original_cluster_ini(stack, name, pairs), encoding='utf-8')

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(CLUSTER), *command, '--config', str(ini)], capture_output=True,
                              text=True, env=stack.tool.env, cwd=stack.tool.folder, timeout=180)
    sent = run('jobsender')
    assert sent.returncode == 0, sent.stderr
    assert 'ignored' not in sent.stderr and '2 queued' in sent.stderr
    worked = run('worker', '--once')
    assert worked.returncode == 0, worked.stderr[-3000:]
    assert 'ignored' not in worked.stderr
    assert bucket_contents(stack.seaweed, stack.dst) == {'orig/o1.txt': b'one',
                                                         'orig/sub/o2.bin': random_bytes(6 * MiB, 5)}
    table = stack.dynamodb.scan(TableName=name)['Items']
    assert {item['Key']['S'] for item in table if item.get('state')} == {f'{stack.dst}/orig/o1.txt',
                                                                         f'{stack.dst}/orig/sub/o2.bin'}
    ini.write_text(original_cluster_ini(stack, name, pairs, 'True'), encoding='utf-8')
    refused = run('jobsender')
    assert refused.returncode == 2 and 'CleanUnfinishedUpload' in refused.stderr and refused.stderr.count('\n') == 1


def test_the_serverless_seed_lambda_environment_works_as_it_did(stack, monkeypatch):
    import s3_upload_cluster
    from conftest import ADMIN_KEY, ADMIN_SECRET
    name = f'seed-{uuid.uuid4().hex[:8]}'
    url = stack.sqs.create_queue(QueueName=name)['QueueUrl']
    stack.put_sources({'data/seed/new.txt': b'from an S3 event'})
    # the seed's Lambda: in the source's account, the destination's keys in its environment
    lambda_environment(stack, monkeypatch, DesBucket='not-this-one', DesProfileName='wrong_keys', CredentialsParameter='',
                       SrcProfileName=stack.seaweed.profile, StatusTable='', SqsQueueUrl='', S3Prefix='', SrcPrefix='',
                       CredentialsFor='Des')
    seed = {'Des_bucket_default': stack.dst, 'Des_prefix_default': 'seeded/', 'Des_region': 'us-east-1',
            'StorageClass': 'STANDARD_IA', 'aws_access_key_id': ADMIN_KEY, 'aws_secret_access_key': ADMIN_SECRET,
            'table_queue_name': name, 'MaxThread': '4'}
    for key, value in seed.items():
        monkeypatch.setenv(key, value)
    stack.dynamodb.create_table(TableName=name, BillingMode='PAY_PER_REQUEST',
                                KeySchema=[{'AttributeName': 'Key', 'KeyType': 'HASH'}],
                                AttributeDefinitions=[{'AttributeName': 'Key', 'AttributeType': 'S'}])
    record = {'eventName': 'ObjectCreated:Put', 's3': {'bucket': {'name': stack.src},
                                                       'object': {'key': 'data/seed/new.txt', 'size': 16}}}
    stack.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({'Records': [record]}))
    [message] = receive(stack, url)
    answer = s3_upload_cluster.lambda_handler({'Records': [sqs_record(message, queue_arn(stack, url))]}, FakeContext(300))
    assert answer == {'batchItemFailures': []}
    key = 'seeded/data/seed/new.txt'
    assert bucket_contents(stack.seaweed, stack.dst) == {key: b'from an S3 event'}
    assert stack.seaweed.client().head_object(Bucket=stack.dst, Key=key).get('StorageClass') == 'STANDARD_IA'
    assert stack.dynamodb.get_item(TableName=name, Key={'Key': {'S': f'{stack.dst}/{key}'}})['Item']['state']['S'] == 'done'

"""s3_upload_cluster.py, the worker fleet, against a local AWS stack: SQS, DynamoDB and SSM of moto in server
mode, data on SeaweedFS.

jobsender -> several worker processes -> objects verified at the destination; a worker killed mid-object;
poison messages; S3 event notifications; the Lambda handler across invocations that run out of time.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from urllib.parse import quote_plus

import pytest

from conftest import MiB, FakeContext, Stack, bucket_contents, copied, random_bytes, wait_for_parts
from s3_upload import Config
from s3_upload_cluster import BadMessage, jobs_from_message



def test_message_formats_and_key_decoding():
    config = Config.from_settings({'JobType': 'S3_TO_S3', 'SrcBucket': 'src', 'SrcPrefix': 'data',
                                   'DesBucket': 'dst', 'S3Prefix': 'copy'})
    job = {'Src_bucket': 'src', 'Src_key': 'data/a+b %c/ünï.txt', 'Des_bucket': 'dst', 'Des_key': 'copy/x',
           'Size': 5, 'versionId': 'v1'}
    [parsed] = jobs_from_message(json.dumps(job), config)
    assert (parsed.src_key, parsed.des_key, parsed.size, parsed.version_id) == ('data/a+b %c/ünï.txt', 'copy/x', 5, 'v1')
    assert json.loads(parsed.message()) == job
    keys = ['data/a b+c.txt', 'data/100% ünïcode/ key ', 'other/x']
    event = {'Records': [{'eventName': 'ObjectCreated:Put', 's3': {'bucket': {'name': 'src'}, 'object': {
        'key': quote_plus(key), 'size': 3, 'versionId': 'null'}}} for key in keys] + [
        {'eventName': 'ObjectRemoved:Delete', 's3': {'bucket': {'name': 'src'}, 'object': {'key': 'data/gone'}}}]}
    jobs = jobs_from_message(json.dumps(event), config)
    assert [(j.src_key, j.des_key, j.version_id) for j in jobs] == [
        ('data/a b+c.txt', 'copy/a b+c.txt', ''), ('data/100% ünïcode/ key ', 'copy/100% ünïcode/ key ', ''),
        ('other/x', 'copy/other/x', '')]
    sns = {'Type': 'Notification', 'TopicArn': 'arn:aws:sns:us-east-1:1:t', 'Message': json.dumps(event)}
    assert jobs_from_message(json.dumps(sns), config) == jobs
    assert jobs_from_message(json.dumps({'Service': 'Amazon S3', 'Event': 's3:TestEvent'}), config) == []
    for poison in ('not json', '[1, 2]', '{"foo": 1}', '{"Records": [{"s3": {}}]}', json.dumps({**job, 'Src_key': ''})):
        with pytest.raises(BadMessage):
            jobs_from_message(poison, config)


def test_jobsender_and_parallel_workers_copy_everything_once(stack):
    objects = {f'data/{folder}/f{n:02}.bin': random_bytes(n * 1000, n) for folder in 'abc' for n in range(12)}
    objects.update({'data/top.txt': b'top', 'data/a/sp ace/x+y%z.txt': b'odd', 'data/b/ünï/ć.bin': b'unicode',
                    'data/big1.bin': random_bytes(12 * MiB, 1), 'data/c/big2.bin': random_bytes(11 * MiB, 2),
                    'database/not-mine.txt': b'outside the prefix'})
    stack.put_sources(objects)
    mine = {k: v for k, v in objects.items() if k.startswith('data/')}
    sent = stack.run('jobsender')
    assert sent.returncode == 0, sent.stderr
    assert f'{len(mine)} queued' in sent.stderr
    again = stack.run('jobsender')          # a non-empty queue is no reason to refuse, nor to send twice
    assert again.returncode == 0 and '0 queued' in again.stderr and f'{len(mine)} already queued' in again.stderr
    workers = [stack.start('worker', '--once', '--report', str(stack.tool.folder / f'w{n}.json'), name=f'w{n}.ini')
               for n in range(3)]
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-3000:]
    assert bucket_contents(stack.seaweed, stack.dst) == copied(stack, mine)
    items = stack.items()
    assert set(items) == {f'{stack.dst}/{key}' for key in copied(stack, mine)}
    assert {item['state'] for item in items.values()} == {'done'}
    assert {item['attempts'] for item in items.values()} == {'1'}     # no object was run by two workers
    reports = [json.loads((stack.tool.folder / f'w{n}.json').read_text()) for n in range(3)]
    assert sum(r['files_transferred'] for r in reports) == len(mine)
    assert stack.depth(stack.queue_url) == 0 and stack.depth(stack.dlq_url) == 0
    shown = stack.run('status')
    assert shown.returncode == 0 and f'done     {len(mine):>9} objects' in shown.stdout
    last = stack.run('jobsender')
    assert last.returncode == 0 and '0 queued' in last.stderr and f'{len(mine)} at destination' in last.stderr


def test_worker_killed_mid_object_is_resumed_by_another(stack):
    data = random_bytes(30 * MiB, 7)
    stack.put_sources({'data/big.bin': data})
    assert stack.run('jobsender').returncode == 0
    first = stack.start('worker', name='slow.ini', BandwidthLimit=4)
    parts = wait_for_parts(stack.seaweed, stack.dst, 'copy/big.bin', 2, timeout=60)
    assert len(parts) >= 2
    first.send_signal(signal.SIGKILL)
    first.wait()
    report = stack.tool.folder / 'second.json'
    second = stack.run('worker', '--once', '--report', str(report))
    assert second.returncode == 0, second.stderr[-3000:]
    assert bucket_contents(stack.seaweed, stack.dst) == {'copy/big.bin': data}
    assert json.loads(report.read_text())['parts_resumed'] >= 2
    item = stack.items()[f'{stack.dst}/copy/big.bin']
    assert item['state'] == 'done' and item['attempts'] == '2'
    assert stack.depth(stack.queue_url) == 0 and stack.depth(stack.dlq_url) == 0
    assert not stack.seaweed.client().list_multipart_uploads(Bucket=stack.dst).get('Uploads')


def test_poison_messages_and_failing_jobs_end_in_the_dead_letter_queue(stack):
    stack.put_sources({'data/fine.txt': b'fine'})
    missing = {'Src_bucket': stack.src, 'Src_key': 'data/missing.txt', 'Des_bucket': stack.dst,
               'Des_key': 'copy/missing.txt', 'Size': 1}
    fine = {**missing, 'Src_key': 'data/fine.txt', 'Des_key': 'copy/fine.txt', 'Size': 4}
    stack.send('this is not json', '{"foo": 1}', json.dumps(missing), json.dumps(fine))
    stack.run('status', StatusTable='')                  # the table is created by jobsender (or deploy/) ...
    assert stack.run('jobsender', '--dry-run').returncode == 0     # ... here: queues nothing
    ran = stack.run('worker', '--once', timeout=120)
    assert ran.returncode == 1, ran.stderr[-3000:]                 # some jobs failed
    assert bucket_contents(stack.seaweed, stack.dst) == {'copy/fine.txt': b'fine'}
    assert stack.depth(stack.queue_url) == 0 and stack.depth(stack.dlq_url) == 3
    assert 'not a job' in ran.stderr
    shown = stack.run('status')
    assert shown.returncode == 1
    assert f'FAILED s3://{stack.dst}/copy/missing.txt' in shown.stdout and 'deleted' in shown.stdout


def test_s3_event_notifications_with_encoded_keys(stack):
    keys = ['data/ev/a b+c.txt', 'data/ev/100% sûr.txt', 'data/ev/plus+only']
    objects = {key: key.encode() * 3 for key in keys}
    stack.put_sources(objects)
    records = [{'eventName': 'ObjectCreated:Put', 's3': {'bucket': {'name': stack.src},
                                                         'object': {'key': quote_plus(key), 'size': len(data)}}}
               for key, data in objects.items()]
    stack.send(json.dumps({'Service': 'Amazon S3', 'Event': 's3:TestEvent', 'Bucket': stack.src}),
               json.dumps({'Records': records[:2]}), json.dumps({'Records': records[2:]}))
    ran = stack.run('worker', '--once', timeout=120, StatusTable='')     # also works without a status table
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert bucket_contents(stack.seaweed, stack.dst) == copied(stack, objects)
    assert stack.depth(stack.queue_url) == 0 and stack.depth(stack.dlq_url) == 0


def test_lambda_handler_finishes_a_large_object_across_invocations(stack, monkeypatch, caplog):
    import s3_upload_cluster
    data = random_bytes(24 * MiB, 9)
    stack.put_sources({'data/large.bin': data})
    assert stack.run('jobsender', '--dry-run').returncode == 0        # creates the status table
    ini = stack.tool.ini(stack.settings(DesBucket='not-this-one'), 'lambda.ini')
    for key, value in stack.tool.env.items():
        if key.startswith('AWS_'):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv('S3_UPLOAD_CONFIG', str(ini))
    monkeypatch.setenv('S3UPLOAD_DesBucket', stack.dst)                # environment overrides the ini
    monkeypatch.setenv('S3UPLOAD_BandwidthLimit', '1')
    monkeypatch.setenv('S3UPLOAD_StopBeforeTimeout', '2')
    monkeypatch.setenv('S3UPLOAD_MaxThread', '2')                      # parts in flight when time runs out
    job = {'Src_bucket': stack.src, 'Src_key': 'data/large.bin', 'Des_bucket': stack.dst,
           'Des_key': 'copy/large.bin', 'Size': len(data), 'versionId': ''}
    event = {'Records': [{'messageId': 'm-1', 'receiptHandle': 'r-1', 'body': json.dumps(job), 'eventSource': 'aws:sqs'},
                         {'messageId': 'm-2', 'receiptHandle': 'r-2', 'body': 'poison', 'eventSource': 'aws:sqs'}]}
    started = time.monotonic()
    first = s3_upload_cluster.lambda_handler(event, FakeContext(5))
    assert time.monotonic() - started < 15
    assert first == {'batchItemFailures': [{'itemIdentifier': 'm-1'}, {'itemIdentifier': 'm-2'}]}
    uploaded = wait_for_parts(stack.seaweed, stack.dst, 'copy/large.bin', 1, timeout=5)
    assert 1 <= len(uploaded) < 5
    assert stack.items()[f'{stack.dst}/copy/large.bin']['state'] == 'queued'     # released, resumable
    monkeypatch.setenv('S3UPLOAD_BandwidthLimit', '0')
    with caplog.at_level(logging.INFO, logger='s3_upload'):
        second = s3_upload_cluster.lambda_handler({'Records': event['Records'][:1]}, FakeContext(120))
    assert second == {'batchItemFailures': []}
    assert 'already there' in caplog.text          # resumed from the first invocation's parts
    assert bucket_contents(stack.seaweed, stack.dst) == {'copy/large.bin': data}
    item = stack.items()[f'{stack.dst}/copy/large.bin']
    assert item['state'] == 'done' and item['attempts'] == '2'


def test_workers_killed_at_random_lose_and_duplicate_nothing(moto, seaweed, tool):
    import random
    stack = Stack(moto, seaweed, tool, max_receive=10)     # each kill costs a receive, as in deploy/ (10)
    rng = random.Random(7)
    objects = {f'data/k/{n:03}.bin': random_bytes(rng.randrange(0, 300_000), n) for n in range(80)}
    objects.update({f'data/big/{n}.bin': random_bytes(11 * MiB, 100 + n) for n in range(3)})
    stack.put_sources(objects)
    assert stack.run('jobsender').returncode == 0
    workers = [stack.start('worker', name=f'r{n}.ini', BandwidthLimit=8, MaxParallelFile=4) for n in range(3)]
    for kill in range(6):
        time.sleep(rng.uniform(0.5, 2.0))
        victim = workers.pop(rng.randrange(len(workers)))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        workers.append(stack.start('worker', name=f'r{kill}b.ini', BandwidthLimit=8, MaxParallelFile=4))
    for worker in workers:
        worker.send_signal(signal.SIGTERM)            # graceful: in-flight parts finish, jobs are released
    for worker in workers:
        worker.communicate(timeout=60)
        assert worker.returncode in (0, 143, -signal.SIGTERM)     # (-15: stopped while still starting)
    finish = [stack.start('worker', '--once', name=f'f{n}.ini') for n in range(2)]
    for worker in finish:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-3000:]
    assert stack.depth(stack.queue_url) == 0 and stack.depth(stack.dlq_url) == 0
    assert bucket_contents(stack.seaweed, stack.dst) == copied(stack, objects)
    assert {item['state'] for item in stack.items().values()} == {'done'}
    assert not stack.seaweed.client().list_multipart_uploads(Bucket=stack.dst).get('Uploads')

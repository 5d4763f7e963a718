#!/usr/bin/env python3
"""s3_upload_cluster: the worker fleet of s3_upload. Many machines, one queue: `jobsender` lists the job and
sends one SQS message per object to copy; `worker` processes (any number, anywhere) and `lambda_handler` copy
them through s3_upload's engine (keep s3_upload.py beside this file). An optional DynamoDB table holds each
object's status; its conditional writes let exactly one worker own a job, and it remembers which source each
multipart upload belongs to, so any worker (or the next Lambda invocation) resumes another's upload.

Usage ([Cluster] in the ini; deploy/ has the CloudFormation templates)::

    python3 s3_upload_cluster.py jobsender --config job.ini    # one SQS message per object to copy
    python3 s3_upload_cluster.py worker --config job.ini       # on each machine: copy the queued objects
    python3 s3_upload_cluster.py status --config job.ini       # totals per state and the failed objects
    s3_upload_cluster.lambda_handler                           # the same worker as an SQS-triggered Lambda

Exit codes as s3_upload.py: 0 done, 1 some objects failed, 2 bad input, 130 / 143 stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Dict, Iterator, List, Optional, Tuple

from s3_upload import (EXIT_FAILED, EXIT_OK, Config, ConfigError, Destination, Engine, FileTransfer, Filters,
                       Progress, Report, ResumeJournal, Retrier, S3Source, SecretFilter, SourceGone, SourceObject,
                       Stopped, Task, WriteOptions, __version__, check_bucket, client_for, default_config_path,
                       describe_error, error_code, fail_input, human_bytes, install_signal_handlers, leave,
                       list_objects, logger, parse_overrides, part_workers, plan, server_side_possible,
                       setup_logging)


@dataclasses.dataclass(frozen=True)
class Job:
    """One object to copy, as a queue message names it."""
    src_bucket: str
    src_key: str
    des_bucket: str
    des_key: str
    size: int = -1
    version_id: str = ''

    @property
    def name(self) -> str:
        """The job's key in the status table: where the copy goes."""
        return f'{self.des_bucket}/{self.des_key}'

    def message(self) -> str:
        """The Jobsender message format of the original cluster version."""
        return json.dumps({'Src_bucket': self.src_bucket, 'Src_key': self.src_key, 'Des_bucket': self.des_bucket,
                           'Des_key': self.des_key, 'Size': self.size, 'versionId': self.version_id})


class BadMessage(ValueError):
    """A queue message that is neither a job nor an S3 event notification."""


def destination_key(source_key: str, config: Config) -> str:
    """Where a source object goes: below S3Prefix, by its key relative to SrcPrefix."""
    source_prefix = config.SrcPrefix + '/' if config.SrcPrefix else ''
    relative = source_key[len(source_prefix):] if source_prefix and source_key.startswith(source_prefix) else source_key
    return (config.S3Prefix + '/' if config.S3Prefix else '') + relative


def jobs_from_message(body: str, config: Config) -> List[Job]:
    """The jobs of one message: a Jobsender job, or an S3 event notification (each created object of
    every record, keys URL-decoded; s3:TestEvent has none), also inside an SNS envelope."""
    from urllib.parse import unquote_plus
    try:
        data = json.loads(body)
    except ValueError:
        raise BadMessage('not JSON') from None
    if not isinstance(data, dict):
        raise BadMessage('not a JSON object')
    if data.get('Type') == 'Notification' and isinstance(data.get('Message'), str):
        return jobs_from_message(data['Message'], config)
    if data.get('Event') == 's3:TestEvent':
        return []
    try:
        if 'Records' in data:
            jobs = []
            for record in data['Records']:
                if not str(record.get('eventName', 'ObjectCreated:')).startswith('ObjectCreated'):
                    continue
                obj = record['s3']['object']
                key = unquote_plus(obj['key'])
                version = str(obj.get('versionId') or '')
                jobs.append(Job(record['s3']['bucket']['name'], key, config.DesBucket, destination_key(key, config),
                                int(obj.get('size', -1)), '' if version == 'null' else version))
        else:
            jobs = [Job(str(data['Src_bucket']), str(data['Src_key']), str(data['Des_bucket']), str(data['Des_key']),
                        int(data.get('Size', -1)), str(data.get('versionId') or ''))]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BadMessage(f'neither a job nor an S3 event ({type(error).__name__}: {error})') from None
    if any(not job.src_key or not job.des_key or not job.src_bucket or not job.des_bucket for job in jobs):
        raise BadMessage('a job without a bucket or key')
    return jobs


def _service_client(config: Config, service: str, endpoint: Optional[str]) -> Any:
    """An SQS / DynamoDB / SSM client of the cluster's profile and region."""
    import botocore.config
    import botocore.exceptions
    import botocore.session
    try:
        session = botocore.session.Session(profile=config.ClusterProfileName or None)
        region = config.ClusterRegion or session.get_config_variable('region') or 'us-east-1'
        return session.create_client(service, endpoint_url=endpoint, region_name=region,
                                     config=botocore.config.Config(retries={'mode': config.RetryMode,
                                                                            'max_attempts': 10},
                                                                   max_pool_connections=config.MaxParallelFile + 8,
                                                                   connect_timeout=10, read_timeout=60))
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(f'AWS profile {config.ClusterProfileName!r} (ClusterProfileName) not found: create it '
                          'or fix the name') from None
    except (botocore.exceptions.BotoCoreError, ValueError) as error:
        raise ConfigError(f'cannot create the {service} client: {describe_error(error)}') from None


def _cluster_error(what: str, error: BaseException) -> ConfigError:
    return ConfigError(f'{what}: {describe_error(error)}: check [Cluster] in the config and the credentials')


def parameter_credentials(ssm: Any, name: str) -> Tuple[Any, str]:
    """Keys kept in an SSM SecureString (JSON {aws_access_key_id, aws_secret_access_key, region}) as
    botocore credentials read again every 45 minutes (rotated keys are picked up); and the region."""
    import datetime
    from botocore.credentials import RefreshableCredentials

    def fetch() -> Dict[str, Any]:
        value = ssm.get_parameter(Name=name, WithDecryption=True)['Parameter']['Value']
        keys = json.loads(value)
        SecretFilter.add(keys['aws_access_key_id'], keys['aws_secret_access_key'], keys.get('aws_session_token'))
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        return {'access_key': keys['aws_access_key_id'], 'secret_key': keys['aws_secret_access_key'],
                'token': keys.get('aws_session_token'), 'expiry_time': expiry.isoformat(), 'region': keys.get('region', '')}

    try:
        first = fetch()
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f'SSM parameter {name} (CredentialsParameter) must hold JSON with aws_access_key_id and '
                          'aws_secret_access_key') from None
    except Exception as error:  # noqa: BLE001 - one line for the user
        raise _cluster_error(f'cannot read SSM parameter {name} (CredentialsParameter)', error) from None
    return RefreshableCredentials.create_from_metadata(first, fetch, 'ssm-parameter'), first['region']


def _attribute(value: Any) -> Dict[str, str]:
    return {'N': str(value)} if isinstance(value, (int, float)) else {'S': str(value)}


def _plain(item: Dict[str, Dict[str, str]]) -> Dict[str, Any]:
    return {name: (float(value['N']) if 'N' in value else value.get('S', '')) for name, value in item.items()}


class StatusTable:
    """One DynamoDB item per object: state (queued / running / done / failed), attempts, bytes, times,
    source version, owner, lease, last error. Conditional writes: a worker runs a job only once its
    claim succeeds, and a claim succeeds only when nobody else holds a live lease on that object."""

    KEY = 'object'
    NAMES = {'#o': 'object', '#s': 'state', '#w': 'worker', '#l': 'lease_until', '#v': 'source_version',
             '#a': 'attempts', '#b': 'bytes', '#z': 'size', '#src': 'source', '#e': 'last_error', '#u': 'updated',
             '#q': 'queued_at', '#st': 'started_at', '#f': 'finished_at'}

    def __init__(self, client: Any, name: str, owner: str, lease_seconds: int) -> None:
        self.client = client
        self.name = name
        self.owner = owner
        self.lease_seconds = lease_seconds

    def check(self, create: bool = False) -> None:
        """The table exists (jobsender creates it, on-demand, when it does not)."""
        try:
            self.client.describe_table(TableName=self.name)
            return
        except Exception as error:  # noqa: BLE001 - sorted below
            if error_code(error) != 'ResourceNotFoundException':
                raise _cluster_error(f'cannot use status table {self.name}', error) from None
            if not create:
                raise ConfigError(f'status table {self.name} does not exist: create it (deploy/) or run jobsender, '
                                  'which creates it') from None
        self.client.create_table(TableName=self.name, BillingMode='PAY_PER_REQUEST',
                                 KeySchema=[{'AttributeName': self.KEY, 'KeyType': 'HASH'}],
                                 AttributeDefinitions=[{'AttributeName': self.KEY, 'AttributeType': 'S'}])
        self.client.get_waiter('table_exists').wait(TableName=self.name)
        logger.info('created status table %s', self.name)

    def _update(self, name: str, expression: str, condition: Optional[str], values: Dict[str, Any]) -> bool:
        used = {alias: real for alias, real in self.NAMES.items()
                if alias in expression or (condition and alias in condition)}
        args: Dict[str, Any] = dict(TableName=self.name, Key={self.KEY: {'S': name}}, UpdateExpression=expression,
                                    ExpressionAttributeNames=used)
        if values:
            args['ExpressionAttributeValues'] = {k: _attribute(v) for k, v in values.items()}
        if condition:
            args['ConditionExpression'] = condition
        try:
            self.client.update_item(**args)
            return True
        except Exception as error:  # noqa: BLE001 - a failed condition is an answer, not an error
            if error_code(error) == 'ConditionalCheckFailedException':
                return False
            raise

    def get(self, name: str) -> Optional[Dict[str, Any]]:
        item = self.client.get_item(TableName=self.name, Key={self.KEY: {'S': name}}, ConsistentRead=True).get('Item')
        return _plain(item) if item else None

    def mark_queued(self, job: Job, version: str, stale_before: float) -> bool:
        """Jobsender: record the job as queued; False when it is already queued (since stale_before) or
        running, so it is not sent twice."""
        now = time.time()
        return self._update(
            job.name, 'SET #s = :queued, #q = :now, #u = :now, #src = :src, #v = :v, #z = :size',
            'attribute_not_exists(#o) OR #s = :failed OR (#s = :done AND #v <> :v) OR (#s = :running AND #l < :now)'
            ' OR (#s = :queued AND #u < :stale)',
            {':queued': 'queued', ':failed': 'failed', ':done': 'done', ':running': 'running', ':now': now,
             ':stale': stale_before, ':src': f's3://{job.src_bucket}/{job.src_key}', ':v': version, ':size': job.size})

    def claim(self, job: Job, version: str, size: int) -> Tuple[str, float]:
        """('claimed', 0), ('done', 0) when this source version is already copied, or ('busy', seconds
        until the other owner's lease ends)."""
        now = time.time()
        if self._update(
                job.name, 'SET #s = :running, #w = :me, #l = :lease, #st = :now, #u = :now, #src = :src, #v = :v, '
                          '#z = :size ADD #a :one',
                'attribute_not_exists(#o) OR #s IN (:queued, :failed) OR #l < :now OR (#s = :done AND #v <> :v)',
                {':running': 'running', ':queued': 'queued', ':failed': 'failed', ':done': 'done', ':me': self.owner,
                 ':lease': now + self.lease_seconds, ':now': now, ':src': f's3://{job.src_bucket}/{job.src_key}',
                 ':v': version, ':size': size, ':one': 1}):
            return 'claimed', 0.0
        item = self.get(job.name) or {}
        if item.get('state') == 'done':
            return 'done', 0.0
        return 'busy', max(1.0, float(item.get('lease_until', now + 1)) - now)

    def renew(self, job: Job, nbytes: int) -> bool:
        now = time.time()
        return self._update(job.name, 'SET #l = :lease, #u = :now, #b = :bytes', '#w = :me AND #s = :running',
                            {':lease': now + self.lease_seconds, ':now': now, ':bytes': nbytes, ':me': self.owner,
                             ':running': 'running'})

    def finish(self, job: Job, error: Optional[str], nbytes: int) -> None:
        now = time.time()
        if error is None:     # the object is complete and verified: true whoever else holds a lease
            self._update(job.name, 'SET #s = :done, #f = :now, #u = :now, #b = :bytes REMOVE #l, #e', None,
                         {':done': 'done', ':now': now, ':bytes': nbytes})
        else:
            self._update(job.name, 'SET #s = :failed, #e = :error, #u = :now REMOVE #l', '#w = :me',
                         {':failed': 'failed', ':error': error[:1000], ':now': now, ':me': self.owner})

    def unreadable(self, job: Job, error: str) -> None:
        """A job that failed before it could be claimed (its source cannot be read): counted as an attempt."""
        now = time.time()
        self._update(job.name, 'SET #s = :failed, #e = :error, #u = :now, #src = :src ADD #a :one',
                     'attribute_not_exists(#o) OR #s <> :running OR #l < :now',
                     {':failed': 'failed', ':error': error[:1000], ':now': now, ':running': 'running', ':one': 1,
                      ':src': f's3://{job.src_bucket}/{job.src_key}'})

    def release(self, job: Job, why: str) -> None:
        """Give a stopped job back (resumable): another worker may claim it at once."""
        self._update(job.name, 'SET #s = :queued, #e = :why, #u = :now REMOVE #l', '#w = :me AND #s = :running',
                     {':queued': 'queued', ':why': why, ':now': time.time(), ':me': self.owner, ':running': 'running'})

    def items(self) -> Iterator[Dict[str, Any]]:
        """Every object's status (the upload records of TableJournal left out)."""
        for page in self.client.get_paginator('scan').paginate(TableName=self.name):
            for item in page.get('Items', []):
                plain = _plain(item)
                if not str(plain.get(self.KEY, '')).startswith(TableJournal.PREFIX):
                    yield plain


class TableJournal:
    """The resume journal kept in the status table, shared by every worker and Lambda invocation."""

    PREFIX = 'upload#'

    def __init__(self, table: StatusTable) -> None:
        self.table = table

    def record(self, bucket: str, key: str, upload_id: str, identity: str, part_size: int) -> None:
        item = {'bucket': bucket, 'key': key, 'upload_id': upload_id, 'identity': identity, 'part_size': part_size,
                'time': time.time(), StatusTable.KEY: self.PREFIX + upload_id}
        self.table.client.put_item(TableName=self.table.name, Item={k: _attribute(v) for k, v in item.items()})

    def get(self, bucket: str, key: str, upload_id: str) -> Optional[Dict[str, Any]]:
        entry = self.table.get(self.PREFIX + upload_id)
        if entry and entry.get('bucket') == bucket and entry.get('key') == key:
            entry['part_size'] = int(entry['part_size'])
            return entry
        return None

    def part_done(self, upload_id: str, number: int, etag: str, checksum: str = '') -> None:
        """Parts are not recorded in the table (a write per part); resume keeps every listed part that fits."""

    def forget(self, upload_id: str) -> None:
        self.table.client.delete_item(TableName=self.table.name, Key={StatusTable.KEY: {'S': self.PREFIX + upload_id}})


class JobQueue:
    """The SQS job queue: long-poll, keep a message hidden, delete, and send in batches of ten with
    every failed entry sent again (none silently lost)."""

    def __init__(self, client: Any, url: str, config: Config) -> None:
        self.client = client
        self.url = url
        self.config = config

    def attributes(self) -> Dict[str, str]:
        try:
            return self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=['All'])['Attributes']
        except Exception as error:  # noqa: BLE001 - one line for the user
            raise _cluster_error(f'cannot use SQS queue {self.url}', error) from None

    def receive(self, count: int) -> List[Dict[str, Any]]:
        return self.client.receive_message(QueueUrl=self.url, MaxNumberOfMessages=max(1, min(10, count)),
                                           WaitTimeSeconds=self.config.PollSeconds,
                                           VisibilityTimeout=self.config.VisibilityTimeout,
                                           AttributeNames=['ApproximateReceiveCount']).get('Messages', [])

    def hide(self, receipt: str, seconds: int) -> None:
        try:
            self.client.change_message_visibility(QueueUrl=self.url, ReceiptHandle=receipt,
                                                  VisibilityTimeout=int(max(0, min(43200, seconds))))
        except Exception as error:  # noqa: BLE001 - the message may be gone already; it is only a hint
            logger.debug('ChangeMessageVisibility: %s', describe_error(error))

    def delete(self, receipt: str) -> None:
        self.client.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    def send(self, jobs: List[Job]) -> None:
        """Send up to ten jobs; entries the queue refuses are sent again with backoff (MaxRetry)."""
        pending = {str(number): job for number, job in enumerate(jobs)}
        for attempt in range(self.config.MaxRetry + 1):
            if not pending:
                return
            if attempt:
                time.sleep(random.uniform(0, min(30.0, 0.5 * 2 ** attempt)))
            try:
                answer = self.client.send_message_batch(QueueUrl=self.url, Entries=[
                    {'Id': number, 'MessageBody': job.message()} for number, job in pending.items()])
            except Exception as error:  # noqa: BLE001 - retried like the refused entries
                logger.warning('SendMessageBatch failed (%s); retrying', describe_error(error))
                continue
            for entry in answer.get('Successful', []):
                pending.pop(entry['Id'], None)
            for entry in answer.get('Failed', []):
                logger.warning('queue refused %s: %s', pending[entry['Id']].name, entry.get('Message', entry.get('Code')))
        if pending:
            raise IOError(f'could not queue {len(pending)} jobs after {self.config.MaxRetry} retries')


class Cluster:
    """The services of cluster mode named in [Cluster]: the queue, the status table, and the keys of
    the other side from SSM."""

    def __init__(self, config: Config, need_queue: bool = True) -> None:
        import socket
        self.config = config
        if need_queue and not config.SqsQueueUrl:
            raise ConfigError('[Cluster] SqsQueueUrl is empty: set the URL of the job queue')
        self.queue = (JobQueue(_service_client(config, 'sqs', config.SqsEndpointURL), config.SqsQueueUrl, config)
                      if config.SqsQueueUrl else None)
        self.status = None
        if config.StatusTable:
            owner = f'{socket.gethostname()}:{os.getpid()}:{random.randrange(1 << 30):x}'
            # A lease ends a second before its message can be received again (the heartbeat renews the
            # lease after hiding the message): the next worker to receive it finds the object free, not busy.
            self.status = StatusTable(_service_client(config, 'dynamodb', config.DynamoDBEndpointURL),
                                      config.StatusTable, owner, config.VisibilityTimeout - 1)
        self.credentials, self.credentials_region = None, ''
        if config.CredentialsParameter:
            self.credentials, self.credentials_region = parameter_credentials(
                _service_client(config, 'ssm', config.SsmEndpointURL), config.CredentialsParameter)

    def check(self, create_table: bool = False) -> None:
        if self.queue is not None:
            self.queue.attributes()
        if self.status is not None:
            self.status.check(create_table)

    def s3(self, side: str, pool: int) -> Any:
        """The S3 client of one side; its keys from CredentialsParameter when that names this side."""
        if self.credentials is not None and side == self.config.CredentialsFor:
            return client_for(self.config, side, pool, self.credentials, self.credentials_region)
        return client_for(self.config, side, pool)

    def journal(self) -> Any:
        if self.status is not None:
            return TableJournal(self.status)
        os.makedirs(self.config.LogDir, exist_ok=True)
        return ResumeJournal(os.path.join(self.config.LogDir, 's3_upload-journal.jsonl'))


class Lease:
    """A message being worked on: its receipt, its jobs' claims and a stop of its own."""

    def __init__(self, receipt: str = '') -> None:
        self.receipt = receipt
        self.started = time.monotonic()
        self.claimed: List[Job] = []
        self.cancel = threading.Event()
        self.retry_after = 0.0


class Heartbeat:
    """While jobs run, every third of VisibilityTimeout: keep their messages hidden and renew their
    status leases; stop a job past JobTimeout, and every job when the worker stops (all resumable)."""

    def __init__(self, config: Config, cluster: Cluster, stop: threading.Event, progress: Progress) -> None:
        self.config = config
        self.cluster = cluster
        self.stop = stop
        self.progress = progress
        self.leases: List[Lease] = []
        self.lock = threading.Lock()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._beat, name='heartbeat', daemon=True)
        self.thread.start()

    def watch(self, lease: Lease) -> Lease:
        with self.lock:
            self.leases.append(lease)
        return lease

    def end(self, lease: Lease) -> None:
        with self.lock:
            self.leases.remove(lease)

    def close(self) -> None:
        self.ended.set()
        self.thread.join()

    def _beat(self) -> None:
        interval, last = self.config.VisibilityTimeout / 3, time.monotonic()
        while not self.ended.wait(0.25):
            with self.lock:
                leases = list(self.leases)
            for lease in leases:
                if self.stop.is_set() or time.monotonic() - lease.started > self.config.JobTimeout:
                    if not lease.cancel.is_set():
                        logger.warning('stopping the job of %s: %s', ', '.join(j.name for j in lease.claimed) or
                                       'a message', 'worker stopping' if self.stop.is_set() else 'JobTimeout reached')
                    lease.cancel.set()
            if time.monotonic() - last < interval:
                continue
            last = time.monotonic()
            for lease in leases:
                try:
                    if lease.receipt and self.cluster.queue is not None and not lease.cancel.is_set():
                        self.cluster.queue.hide(lease.receipt, self.config.VisibilityTimeout)
                    for job in list(lease.claimed):
                        if self.cluster.status is not None:
                            done = self.progress.snapshot()['active'].get(job.des_key, [0])[0]
                            if not self.cluster.status.renew(job, done):
                                logger.warning('lost the lease of %s to another worker', job.name)
                except Exception as error:  # noqa: BLE001 - next beat tries again
                    logger.warning('heartbeat failed: %s', describe_error(error))


class Worker:
    """Copies the jobs of queue messages through one Engine per bucket pair, MaxParallelFile at once;
    a message is deleted only when every job in it is complete and verified."""

    def __init__(self, config: Config, cluster: Cluster, stop: threading.Event) -> None:
        if config.CompareMode == 'size':     # a same-size object counts as done only if it is this source
            config = Config({**config.raw, 'comparemode': 'identity'}, config.path)
        self.config = config
        self.cluster = cluster
        self.stop = stop
        self.retrier = Retrier(config.MaxRetry, stop)
        self.progress = Progress()
        self.journal = cluster.journal()
        self.engines: Dict[Tuple[str, str], Engine] = {}
        self.clients: Dict[str, Any] = {}
        self.lock = threading.Lock()
        self.heartbeat = Heartbeat(config, cluster, stop, self.progress)

    def engine(self, job: Job) -> Engine:
        with self.lock:
            pair = (job.src_bucket, job.des_bucket)
            if pair not in self.engines:
                config, pool = self.config, self.config.MaxParallelFile + part_workers(self.config) + 4
                for side in ('Src', 'Des'):
                    if side not in self.clients:
                        self.clients[side] = self.cluster.s3(side, pool)
                source = S3Source(self.clients['Src'], job.src_bucket, '', '*', config.ListPageSize, self.retrier,
                                  config.RequestPayer == 'requester', config.CopyTags, config.CopyMetadata)
                destination = Destination(self.clients['Des'], job.des_bucket, '', WriteOptions.from_config(config),
                                          config.ListPageSize, self.retrier)
                server_side = (not config.CredentialsParameter and
                               server_side_possible(config, self.clients['Src'], self.clients['Des']))
                self.engines[pair] = Engine(config, source, destination, self.journal, self.retrier, self.progress,
                                            None, server_side)
            return self.engines[pair]

    def copy(self, job: Job, lease: Lease) -> str:
        """Claim and copy one object: 'done', 'busy' (another worker owns it), 'stopped' or 'failed'."""
        engine, status = self.engine(job), self.cluster.status
        try:
            obj = self.retrier.call(f'HeadObject (source) {job.src_key}', engine.source.current,
                                    SourceObject(job.src_key, 0, '', job.src_key))
        except Stopped:
            return 'stopped'
        except Exception as error:  # noqa: BLE001 - reported, the message comes back later
            message = f'cannot read the source s3://{job.src_bucket}/{job.src_key}: ' + (
                str(error) if isinstance(error, SourceGone) else describe_error(error))
            logger.error('FAILED %s: %s', job.name, message)
            self.progress.add(files_total=1)
            self.progress.fail(job.name, message)
            if status is not None:
                status.unreadable(job, message)
            return 'failed'
        if status is not None:
            claim, wait_seconds = status.claim(job, obj.version, obj.size)
            if claim == 'done':
                logger.info('skip %s: already done', job.name)
                return 'done'
            if claim == 'busy':
                logger.info('%s is being copied by another worker; leaving its message for later', job.name)
                lease.retry_after = max(lease.retry_after, wait_seconds)
                return 'busy'
        lease.claimed.append(job)
        self.progress.add(files_total=1, bytes_total=obj.size)
        try:
            head = self.retrier.call(f'HeadObject {job.des_key}', engine.destination.head, job.des_key)
            action = 'check' if head is not None and head.size == obj.size else 'send'
            error = FileTransfer(engine, Task(obj, job.des_key, action), lease.cancel).run()
        except Stopped:
            if status is not None:
                status.release(job, 'stopped before the end; resumable')
            return 'stopped'
        except Exception as failure:  # noqa: BLE001 - e.g. the destination HEAD failed for good
            error = describe_error(failure)
            self.progress.fail(job.name, error)
        finally:
            lease.claimed.remove(job)
        if status is not None:
            status.finish(job, error, obj.size)
        return 'done' if error is None else 'failed'

    def process(self, body: str, lease: Lease) -> str:
        """Every job of one message, in turn: 'done' when all are at the destination, else the worst
        outcome ('failed', 'stopped' or 'busy'). BadMessage when the body is not a job."""
        outcomes = set()
        for job in jobs_from_message(body, self.config):
            if lease.cancel.is_set():
                outcomes.add('stopped')
                break
            outcomes.add(self.copy(job, lease))
        return next((o for o in ('failed', 'stopped', 'busy') if o in outcomes), 'done')

    def handle(self, message: Dict[str, Any]) -> None:
        """One SQS message: delete it when done; otherwise let it come back (soon when stopped or
        unreadable, after the other owner's lease when busy, with backoff when failed)."""
        queue, receipt = self.cluster.queue, message['ReceiptHandle']
        assert queue is not None
        lease = self.heartbeat.watch(Lease(receipt))
        try:
            try:
                outcome = self.process(message['Body'], lease)
            except BadMessage as error:
                logger.error('message %s is not a job (%s): leaving it for the dead-letter queue',
                             message.get('MessageId'), error)
                queue.hide(receipt, 0)
                return
            except Exception as error:  # noqa: BLE001 - e.g. the status table is unreachable
                logger.error('message %s: %s', message.get('MessageId'), describe_error(error))
                outcome = 'failed'
            if outcome == 'done':
                queue.delete(receipt)
            elif outcome == 'stopped':
                queue.hide(receipt, 0)
            elif outcome == 'busy':
                queue.hide(receipt, min(self.config.VisibilityTimeout, lease.retry_after + 1))
            else:
                received = int(message.get('Attributes', {}).get('ApproximateReceiveCount', '1'))
                queue.hide(receipt, min(self.config.VisibilityTimeout, 5 * 2 ** received))
        finally:
            self.heartbeat.end(lease)

    def run(self, once: bool = False) -> None:
        """Long-poll and run jobs until stopped (or, once=True, until the queue is empty everywhere)."""
        queue = self.cluster.queue
        assert queue is not None
        pool = ThreadPoolExecutor(self.config.MaxParallelFile, 'job')
        running: set = set()
        try:
            while not self.stop.is_set():
                running = {future for future in running if not future.done()}
                free = self.config.MaxParallelFile - len(running)
                if free <= 0:
                    wait(running, timeout=1, return_when=FIRST_COMPLETED)
                    continue
                try:
                    messages = queue.receive(free)
                except Exception as error:  # noqa: BLE001 - the queue may come back
                    logger.warning('ReceiveMessage failed: %s', describe_error(error))
                    self.stop.wait(5)
                    continue
                for message in messages:
                    running.add(pool.submit(self.handle, message))
                if once and not messages and not running and self._drained(queue):
                    logger.info('the queue is empty: done')
                    break
        finally:
            pool.shutdown(wait=True)
            self.close()

    @staticmethod
    def _drained(queue: JobQueue) -> bool:
        counts = queue.attributes()
        return all(int(counts.get(name, '0')) == 0 for name in (
            'ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesDelayed'))

    def close(self) -> None:
        self.heartbeat.close()
        for engine in self.engines.values():
            engine.part_pool.shutdown(wait=True)


def _folder_plans(config: Config, source_client: Any, destination_client: Any,
                  retrier: Retrier) -> Iterator[Tuple[Any, Destination]]:
    """(source, destination) pairs that together cover the job: the objects directly in SrcPrefix, then
    each folder in it, so jobsender lists and compares folders in parallel."""
    args = (config.ListPageSize, retrier, config.RequestPayer == 'requester')
    options = WriteOptions.from_config(config)
    if config.SrcFileIndex.strip() not in ('', '*'):
        yield (S3Source(source_client, config.SrcBucket, config.SrcPrefix, config.SrcFileIndex, *args),
               Destination(destination_client, config.DesBucket, config.S3Prefix, options, config.ListPageSize, retrier))
        return
    yield (TopLevelSource(source_client, config.SrcBucket, config.SrcPrefix, '*', *args),
           TopLevelDestination(destination_client, config.DesBucket, config.S3Prefix, options, config.ListPageSize, retrier))
    base = config.SrcPrefix + '/' if config.SrcPrefix else ''
    for item in list_objects(source_client, config.SrcBucket, base, config.ListPageSize, retrier, None, folders=True):
        if 'Prefix' in item:
            folder = item['Prefix'][len(base):].rstrip('/')
            yield (S3Source(source_client, config.SrcBucket, base + folder, '*', *args),
                   Destination(destination_client, config.DesBucket, (config.S3Prefix + '/' if config.S3Prefix else '')
                               + folder, options, config.ListPageSize, retrier))


class TopLevelSource(S3Source):
    """Only the objects directly in the prefix, not in its folders."""

    def objects(self) -> Iterator[SourceObject]:
        for item in list_objects(self.client, self.bucket, self.prefix, self.page_size, self.retry, self.extra, True):
            if 'Key' in item:
                yield self._describe(item['Key'], item['Size'], item.get('ETag', ''))


class TopLevelDestination(Destination):
    """Only the objects directly in the prefix, not in its folders."""

    def objects(self) -> Iterator[Tuple[str, int, str]]:
        for item in list_objects(self.client, self.bucket, self.prefix, self.page_size, self.retry, self.payer, True):
            if 'Key' in item:
                yield item['Key'][len(self.prefix):], item['Size'], item.get('ETag', '')


def send_jobs(config: Config, cluster: Cluster, dry_run: bool = False, out: Any = None) -> Dict[str, int]:
    """Jobsender: one message per object the destination lacks (as the CLI would send it), folders
    listed in parallel; objects already queued or running per the status table are not sent again."""
    if config.JobType != 'S3_TO_S3':
        raise ConfigError('jobsender needs JobType = S3_TO_S3 (the workers read the source from S3)')
    retrier = Retrier(config.MaxRetry, threading.Event())
    source_client, destination_client = cluster.s3('Src', 16), cluster.s3('Des', 16)
    check_bucket(source_client, config.SrcBucket, config.SrcPrefix, 'source')
    check_bucket(destination_client, config.DesBucket, config.S3Prefix, 'destination')
    filters = Filters.from_config(config)
    stale_before = 0.0
    if cluster.queue is not None:
        retention = int(cluster.queue.attributes().get('MessageRetentionPeriod', '345600'))
        stale_before = time.time() - retention     # a message queued earlier than this is gone
    counts = dict.fromkeys(('listed', 'queued', 'at_destination', 'already_queued', 'excluded', 'failed'), 0)
    lock = threading.Lock()

    def count(name: str, amount: int = 1) -> None:
        with lock:
            counts[name] += amount

    def plan_folder(source: S3Source, destination: Destination) -> None:
        batch: List[Job] = []

        def flush() -> None:
            try:
                if batch and cluster.queue is not None:
                    cluster.queue.send(batch)
                    count('queued', len(batch))
            except Exception as error:  # noqa: BLE001 - counted and shown; the status says so too
                logger.error('%s', describe_error(error))
                count('failed', len(batch))
                for job in batch:
                    if cluster.status is not None:
                        cluster.status.finish(job, 'could not be queued', 0)
            batch.clear()

        for task in plan(source.objects(), destination, filters, source.match_name, config.CompareMode):
            count('listed')
            if task.action in ('exclude', 'skip', 'fail'):
                count({'exclude': 'excluded', 'skip': 'at_destination', 'fail': 'failed'}[task.action])
                if task.action == 'fail':
                    logger.error('FAILED %s: %s', task.key, task.reason)
                continue
            job = Job(config.SrcBucket, task.source.location, config.DesBucket, task.key, task.source.size)
            if dry_run:
                count('queued')
                print(f'queue    {job.src_key} -> s3://{job.name}  {job.size}', file=out)
                continue
            if cluster.status is not None and not cluster.status.mark_queued(job, task.source.version, stale_before):
                count('already_queued')
                continue
            batch.append(job)
            if len(batch) == 10:
                flush()
        flush()

    with ThreadPoolExecutor(8, 'list') as pool:
        for future in [pool.submit(plan_folder, *pair) for pair in
                       _folder_plans(config, source_client, destination_client, retrier)]:
            future.result()
    return counts


def show_status(config: Config, cluster: Cluster, out: Any) -> int:
    """Print the totals per state, the queue depth and the failed objects with their last error."""
    if cluster.status is None and cluster.queue is None:
        raise ConfigError('status needs [Cluster] StatusTable and/or SqsQueueUrl')
    if cluster.queue is not None:
        counts = cluster.queue.attributes()
        print(f'queue: {counts.get("ApproximateNumberOfMessages", "?")} waiting, '
              f'{counts.get("ApproximateNumberOfMessagesNotVisible", "?")} in progress', file=out)
    if cluster.status is None:
        return EXIT_OK
    totals: Dict[str, List[float]] = {}
    failed = []
    for item in cluster.status.items():
        state = str(item.get('state', '?'))
        totals.setdefault(state, [0, 0])
        totals[state][0] += 1
        totals[state][1] += float(item.get('size', 0) or 0)
        if state == 'failed':
            failed.append(item)
    for state in ('queued', 'running', 'done', 'failed'):
        number, size = totals.get(state, [0, 0])
        print(f'{state:8} {int(number):>9} objects  {human_bytes(size)}', file=out)
    for item in failed:
        print(f'FAILED s3://{item[StatusTable.KEY]}  (attempts {int(item.get("attempts", 0))}): '
              f'{item.get("last_error", "")}', file=out)
    return EXIT_FAILED if failed else EXIT_OK


def build_cluster_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='s3_upload_cluster.py', description='A worker fleet fed by an SQS queue ([Cluster] in the config).')
    commands = parser.add_subparsers(dest='command', required=True)
    for name, text in (('jobsender', 'queue one message per object the destination lacks'),
                       ('worker', 'copy the queued objects (long-polls SQS; SIGTERM stops gracefully)'),
                       ('status', 'print totals per state, the queue depth and the failed objects')):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument('--config', metavar='PATH', help='ini file (default: s3_upload_config.ini beside the script)')
        command.add_argument('--set', metavar='KEY=VALUE', action='append', default=[], help='override a config key')
        if name == 'jobsender':
            command.add_argument('--dry-run', action='store_true', help='print the jobs and counts; send nothing')
        if name == 'worker':
            command.add_argument('--once', action='store_true', help='exit when the queue is empty (nothing waiting '
                                                                     'or in flight)')
            command.add_argument('--report', metavar='PATH', help='write a JSON summary on exit')
    return parser


CLUSTER_COMMANDS = ('jobsender', 'worker', 'status')


def exit_now(code: int) -> None:
    """A worker asked twice to stop: its jobs come back to the queue after their visibility timeout."""
    logging.shutdown()
    os._exit(code)


def main(argv: Optional[List[str]] = None) -> int:
    """`jobsender`, `worker` and `status`: exit 0 done, 1 some objects failed, 2 bad input, 130/143 stopped."""
    args = build_cluster_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = Config.load(args.config or default_config_path(), parse_overrides(args.set), dict(os.environ))
        setup_logging(config)
        for warning in config.warnings:
            logger.warning('%s', warning)
        cluster = Cluster(config, need_queue=args.command != 'status')
        cluster.check(create_table=args.command == 'jobsender')
        if args.command == 'status':
            return show_status(config, cluster, sys.stdout)
        if args.command == 'jobsender':
            counts = send_jobs(config, cluster, args.dry_run, sys.stdout)
            print(('dry run: ' if args.dry_run else '') + ', '.join(f'{v} {k.replace("_", " ")}'
                                                                     for k, v in counts.items()), file=sys.stderr)
            return EXIT_FAILED if counts['failed'] else EXIT_OK
        stop = threading.Event()
        outcome = install_signal_handlers(stop, exit_now)
        if config.DesBucket:
            check_bucket(cluster.s3('Des', 4), config.DesBucket, config.S3Prefix, 'destination')
        worker = Worker(config, cluster, stop)
        logger.info('s3_upload %s worker: %s, %d jobs at once', __version__, config.SqsQueueUrl, config.MaxParallelFile)
        worker.run(once=args.once)
    except ConfigError as error:
        return fail_input(str(error))
    except OSError as error:
        return fail_input(f'cannot create the log folder or file: {error}: fix LogDir')
    worker.progress.source, worker.progress.destination = config.SqsQueueUrl, 'the jobs\' destinations'
    report = Report.from_progress(worker.progress, stop.is_set())
    print(report.summary(), file=sys.stderr)
    if args.report:
        report.write(args.report)
    return outcome['code'] if stop.is_set() else report.exit_code


def _lambda_setup(config: Config) -> Config:
    """Lambda: logs to its stream (filtered for secrets), journal and logs below /tmp."""
    level = getattr(logging, config.LoggingLevel)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
    logger.setLevel(level)
    for name in ('botocore', 'boto3', 'urllib3'):
        logging.getLogger(name).setLevel(logging.DEBUG if level == logging.DEBUG else logging.WARNING)
    if not os.path.isabs(config.LogDir) and os.environ.get('AWS_LAMBDA_FUNCTION_NAME'):
        config = Config({**config.raw, 'logdir': os.path.join('/tmp', config.LogDir)}, config.path)
    return config


def lambda_handler(event: Dict[str, Any], context: Any) -> Dict[str, Any]:
    """AWS Lambda entry point for an SQS trigger (ReportBatchItemFailures on): the same worker, one
    invocation at a time. No new part starts once the remaining time is below StopBeforeTimeout; the
    unfinished messages are returned as batchItemFailures and the next invocation resumes them from
    the parts already uploaded."""
    config = _lambda_setup(Config.load(os.environ.get('S3_UPLOAD_CONFIG') or default_config_path(),
                                       environ=dict(os.environ)))
    stop = threading.Event()
    worker = Worker(config, Cluster(config, need_queue=False), stop)
    finished = threading.Event()

    def watch_clock() -> None:
        while not finished.wait(0.2):
            if context.get_remaining_time_in_millis() < config.StopBeforeTimeout * 1000:
                logger.warning('%d s left in this invocation: finishing the parts in flight, resuming next time',
                               context.get_remaining_time_in_millis() // 1000)
                stop.set()
                return

    def run(record: Dict[str, Any]) -> bool:
        lease = worker.heartbeat.watch(Lease())
        try:
            return worker.process(record.get('body', ''), lease) == 'done'
        except BadMessage as error:
            logger.error('message %s is not a job (%s)', record.get('messageId'), error)
            return False
        except Exception as error:  # noqa: BLE001 - this message comes back; the others go on
            logger.error('message %s: %s', record.get('messageId'), describe_error(error))
            return False
        finally:
            worker.heartbeat.end(lease)

    clock = threading.Thread(target=watch_clock, name='clock', daemon=True)
    clock.start()
    records = event.get('Records', [])
    done: List[bool] = []
    try:
        with ThreadPoolExecutor(max(1, min(config.MaxParallelFile, len(records) or 1)), 'job') as pool:
            done = list(pool.map(run, records))
    finally:
        finished.set()
        worker.close()
    return {'batchItemFailures': [{'itemIdentifier': record['messageId']}
                                  for record, ok in zip(records, done) if not ok]}


if __name__ == '__main__':
    leave(main())

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
import re
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from s3_upload import (EXIT_FAILED, EXIT_OK, Config, ConfigError, Destination, DestinationIndex, Dialect, Engine,
                       FileTransfer, Filters, Progress, Report, ResumeJournal, Retrier, S3Source, SecretFilter,
                       SourceGone, SourceObject, Stopped, Task, WriteOptions, __version__, check_bucket, client_for,
                       default_config_path, describe_error, error_code, fail_input, human_bytes,
                       install_signal_handlers, leave, list_objects, logger, parse_overrides, part_workers, plan,
                       server_side_possible, setup_logging)


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
            version = str(data.get('versionId') or '')
            jobs = [Job(str(data['Src_bucket']), str(data['Src_key']), str(data['Des_bucket']), str(data['Des_key']),
                        int(data.get('Size', -1)), '' if version == 'null' else version)]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BadMessage(f'neither a job nor an S3 event ({type(error).__name__}: {error})') from None
    if any(not job.src_key or not job.des_key or not job.src_bucket or not job.des_bucket for job in jobs):
        raise BadMessage('a job without a bucket or key')
    return jobs


# The original cluster ini and serverless Lambda environment, read as ours (the seeds' names and meanings).
ORIGINAL_KEYS: Dict[str, Tuple[str, ...]] = {
    'table_queue_name': ('StatusTable', 'SqsQueueUrl'),      # one name for the queue and the table
    'sqs_queue_name': ('SqsQueueUrl',),
    'ssm_parameter_bucket': ('BucketPairsParameter',),
    'ssm_parameter_credentials': ('CredentialsParameter',),
    'des_bucket_default': ('DesBucket',),
    'des_prefix_default': ('S3Prefix',),
    'des_region': ('DesRegion',),
    'ifverifymd5twice': ('ifVerifyMD5',),
}
ORIGINAL_ENVIRONMENT = ('Des_bucket_default', 'Des_prefix_default', 'Des_region', 'StorageClass', 'table_queue_name',
                        'sqs_queue_name', 'ssm_parameter_bucket', 'ssm_parameter_credentials', 'JobType', 'MaxRetry',
                        'MaxThread', 'MaxParallelFile', 'JobTimeout', 'JobsenderCompareVersionId', 'UpdateVersionId',
                        'GetObjectWithVersionId')


def original_setting(key: str, value: str) -> Optional[Dict[str, str]]:
    """Our settings for one key (lower case) of the original cluster ini or Lambda environment; None when the
    key is not one of theirs; ConfigError for the one meaning the fleet does not offer."""
    if key in ORIGINAL_KEYS:
        return {name.lower(): value for name in ORIGINAL_KEYS[key]}
    if key == 'jobtype' and value.upper() in ('PUT', 'GET'):
        # PUT: this machine is not in the destination's account (the parameter holds its keys); GET: the source's
        return {'jobtype': 'S3_TO_S3', 'credentialsfor': 'Des' if value.upper() == 'PUT' else 'Src'}
    if key in ('localprofilemode', 'checkip_url'):
        return {}     # a profile or the instance role: the default credential chain tries both; no IP lookup
    if key == 'cleanunfinishedupload':
        if value.lower() in ('true', 'yes', 'on', '1'):
            raise ConfigError('CleanUnfinishedUpload = True is not offered: workers resume unfinished uploads and abort '
                              'the ones they give up; to abort them all, run s3_upload.py --nogui with '
                              'DontAskMeToClean = False')
        return {}
    return None


ORIGINAL = Dialect(sections=('Mode', 'Debug'), translate=original_setting, optional=('SrcBucket',))


def original_environment(environ: Dict[str, str]) -> Dict[str, str]:
    """Settings from the serverless seed's Lambda environment variables (their exact names)."""
    settings: Dict[str, str] = {}
    for name in ORIGINAL_ENVIRONMENT:
        if name in environ:
            translated = original_setting(name.lower(), environ[name])
            settings.update(translated if translated is not None else {name.lower(): environ[name]})
    return settings


def load_config(path: str, overrides: Dict[str, str], environ: Dict[str, str]) -> Config:
    """The fleet's config: ours or the original cluster ini; S3UPLOAD_<Key> variables; then overrides."""
    return Config.load(path, overrides, environ, ORIGINAL)


def _service_client(config: Config, service: str, endpoint: Optional[str], attempts: int = 10) -> Any:
    """An SQS / DynamoDB / SSM / CloudWatch client of the cluster's profile and region."""
    import botocore.config
    import botocore.exceptions
    import botocore.session
    try:
        session = botocore.session.Session(profile=config.ClusterProfileName or None)
        region = config.ClusterRegion or session.get_config_variable('region') or 'us-east-1'
        return session.create_client(service, endpoint_url=endpoint, region_name=region,
                                     config=botocore.config.Config(retries={'mode': config.RetryMode,
                                                                            'max_attempts': attempts},
                                                                   max_pool_connections=config.MaxParallelFile + 8,
                                                                   connect_timeout=min(10, attempts), read_timeout=60))
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(f'AWS profile {config.ClusterProfileName!r} (ClusterProfileName) not found: create it '
                          'or fix the name') from None
    except (botocore.exceptions.BotoCoreError, ValueError) as error:
        raise ConfigError(f'cannot create the {service} client: {describe_error(error)}') from None


def _cluster_error(what: str, error: BaseException) -> ConfigError:
    return ConfigError(f'{what}: {describe_error(error)}: check [Cluster] in the config and the credentials')


def gcp_secret(name: str, endpoint: Optional[str]) -> str:
    """A GCP Secret Manager secret (projects/P/secrets/S[/versions/V]) read over its REST API with the token of
    the GCE instance's service account, from the metadata server (GCE_METADATA_HOST, as Google's libraries
    read it): no Google library needed."""
    import base64
    import urllib.request
    host = os.environ.get('GCE_METADATA_HOST', 'metadata.google.internal')
    asked = urllib.request.Request(f'http://{host}/computeMetadata/v1/instance/service-accounts/default/token',
                                   headers={'Metadata-Flavor': 'Google'})
    with urllib.request.urlopen(asked, timeout=10) as answer:
        token = json.load(answer)['access_token']
    version = name if '/versions/' in name else name + '/versions/latest'
    asked = urllib.request.Request(f'{endpoint or "https://secretmanager.googleapis.com"}/v1/{version}:access',
                                   headers={'Authorization': f'Bearer {token}'})
    with urllib.request.urlopen(asked, timeout=30) as answer:
        return base64.b64decode(json.load(answer)['payload']['data']).decode('utf-8')


def secret_credentials(read: Callable[[], str], what: str, side: str) -> Dict[str, Tuple[Any, str]]:
    """The keys a secret holds, by side ('Src' / 'Des'), as botocore credentials read again every 45 minutes
    (rotated keys are picked up), with each side's region: JSON {aws_access_key_id, aws_secret_access_key,
    region} for `side`, or 3GSync's {"source": {...}, "destination": {...}} for both."""
    import datetime
    from botocore.credentials import RefreshableCredentials

    def by_side() -> Dict[str, Dict[str, str]]:
        data = json.loads(read())
        if 'source' in data or 'destination' in data:
            return {name: data[key] for name, key in (('Src', 'source'), ('Des', 'destination')) if key in data}
        return {side: data}

    def metadata(keys: Dict[str, str]) -> Dict[str, Any]:
        SecretFilter.add(keys['aws_access_key_id'], keys['aws_secret_access_key'], keys.get('aws_session_token'))
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        return {'access_key': keys['aws_access_key_id'], 'secret_key': keys['aws_secret_access_key'],
                'token': keys.get('aws_session_token'), 'expiry_time': expiry.isoformat()}

    try:
        first = by_side()
        sides = {name: (RefreshableCredentials.create_from_metadata(
            metadata(keys), lambda name=name: metadata(by_side()[name]), 'secret'), str(keys.get('region', '')))
            for name, keys in first.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(f'{what} must hold JSON with aws_access_key_id and aws_secret_access_key (or 3GSync\'s '
                          '{"source": {...}, "destination": {...}})') from None
    except Exception as error:  # noqa: BLE001 - one line for the user
        raise _cluster_error(f'cannot read {what}', error) from None
    return sides


def _attribute(value: Any) -> Dict[str, str]:
    return {'N': str(value)} if isinstance(value, (int, float)) else {'S': str(value)}


def _plain(item: Dict[str, Dict[str, str]]) -> Dict[str, Any]:
    return {name: (float(value['N']) if 'N' in value else value.get('S', '')) for name, value in item.items()}


class StatusTable:
    """One DynamoDB item per object: state (queued / running / done / failed), attempts, bytes, times,
    source version, owner, lease, last error. Conditional writes: a worker runs a job only once its
    claim succeeds, and a claim succeeds only when nobody else holds a live lease on that object."""

    NAMES = {'#s': 'state', '#w': 'worker', '#l': 'lease_until', '#v': 'source_version', '#vid': 'version_id',
             '#a': 'attempts', '#b': 'bytes', '#z': 'size', '#src': 'source', '#e': 'last_error', '#u': 'updated',
             '#q': 'queued_at', '#st': 'started_at', '#f': 'finished_at', '#after': 'after'}
    OWN_PREFIXES = ('upload#', 'jobsender#')      # items that are not objects: uploads, listing cursors

    def __init__(self, client: Any, name: str, owner: str, lease_seconds: int) -> None:
        self.client = client
        self.name = name
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.key = 'object'       # the table's partition key (the original tool's tables name it otherwise)

    def check(self, create: bool = False) -> None:
        """The table exists (jobsender creates it, on-demand, when it does not); its partition key is used."""
        try:
            schema = self.client.describe_table(TableName=self.name)['Table']['KeySchema']
            self.key = next(part['AttributeName'] for part in schema if part['KeyType'] == 'HASH')
            return
        except Exception as error:  # noqa: BLE001 - sorted below
            if error_code(error) != 'ResourceNotFoundException':
                raise _cluster_error(f'cannot use status table {self.name}', error) from None
            if not create:
                raise ConfigError(f'status table {self.name} does not exist: create it (deploy/) or run jobsender, '
                                  'which creates it') from None
        self.client.create_table(TableName=self.name, BillingMode='PAY_PER_REQUEST',
                                 KeySchema=[{'AttributeName': self.key, 'KeyType': 'HASH'}],
                                 AttributeDefinitions=[{'AttributeName': self.key, 'AttributeType': 'S'}])
        self.client.get_waiter('table_exists').wait(TableName=self.name)
        logger.info('created status table %s', self.name)

    def _update(self, name: str, expression: str, condition: Optional[str], values: Dict[str, Any]) -> bool:
        names = {'#o': self.key, **self.NAMES}
        used = {alias: real for alias, real in names.items()
                if re.search(re.escape(alias) + r'\b', expression + ' ' + (condition or ''))}
        args: Dict[str, Any] = dict(TableName=self.name, Key={self.key: {'S': name}}, UpdateExpression=expression,
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
        item = self.client.get_item(TableName=self.name, Key={self.key: {'S': name}}, ConsistentRead=True).get('Item')
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

    def claim(self, job: Job, version: str, size: int, version_id: str = '') -> Tuple[str, float]:
        """('claimed', 0), ('done', 0) when this source version is already copied, or ('busy', seconds
        until the other owner's lease ends). The S3 versionId being copied is recorded."""
        now = time.time()
        if self._update(
                job.name, 'SET #s = :running, #w = :me, #l = :lease, #st = :now, #u = :now, #src = :src, #v = :v, '
                          '#vid = :vid, #z = :size ADD #a :one',
                'attribute_not_exists(#o) OR #s IN (:queued, :failed) OR #l < :now OR (#s = :done AND #v <> :v)',
                {':running': 'running', ':queued': 'queued', ':failed': 'failed', ':done': 'done', ':me': self.owner,
                 ':lease': now + self.lease_seconds, ':now': now, ':src': f's3://{job.src_bucket}/{job.src_key}',
                 ':v': version, ':vid': version_id, ':size': size, ':one': 1}):
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
        """Every object's status (the records of uploads and listing cursors left out)."""
        for page in self.client.get_paginator('scan').paginate(TableName=self.name):
            for item in page.get('Items', []):
                plain = _plain(item)
                if not str(plain.get(self.key, '')).startswith(self.OWN_PREFIXES):
                    yield plain

    def note(self, name: str, value: Optional[str]) -> None:
        """Keep (or, None, drop) a small record of our own under one of OWN_PREFIXES."""
        if value is None:
            self.client.delete_item(TableName=self.name, Key={self.key: {'S': name}})
        else:
            self.client.put_item(TableName=self.name, Item={self.key: {'S': name}, 'after': {'S': value},
                                                            'updated': _attribute(time.time())})

    def take_turn(self, name: str, seconds: float) -> str:
        """Hold a turn of our own (e.g. jobsender's) for seconds: '' when taken, else who holds it."""
        now = time.time()
        if self._update(name, 'SET #w = :me, #l = :until, #u = :now',
                        'attribute_not_exists(#o) OR #l < :now OR #w = :me',
                        {':me': self.owner, ':until': now + seconds, ':now': now}):
            return ''
        return str((self.get(name) or {}).get('worker', 'another process'))

    def end_turn(self, name: str) -> None:
        self._update(name, 'SET #l = :over', '#w = :me', {':me': self.owner, ':over': 0})

    def noted(self, name: str) -> str:
        item = self.get(name)
        return str(item.get('after', '')) if item else ''


class TableJournal:
    """The resume journal kept in the status table, shared by every worker and Lambda invocation."""

    PREFIX = 'upload#'

    def __init__(self, table: StatusTable) -> None:
        self.table = table

    def record(self, bucket: str, key: str, upload_id: str, identity: str, part_size: int) -> None:
        item = {'bucket': bucket, 'key': key, 'upload_id': upload_id, 'identity': identity, 'part_size': part_size,
                'time': time.time(), self.table.key: self.PREFIX + upload_id}
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
        self.table.client.delete_item(TableName=self.table.name, Key={self.table.key: {'S': self.PREFIX + upload_id}})


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


def queue_url_of(arn: str, endpoint: Optional[str]) -> str:
    """The URL of the queue an SQS ARN names (arn:PARTITION:sqs:REGION:ACCOUNT:NAME), without a request."""
    try:
        _, partition, _, region, account, name = arn.split(':', 5)
    except ValueError:
        raise BadMessage(f'eventSourceARN {arn!r} is not an SQS queue ARN') from None
    host = f'https://sqs.{region}.amazonaws.com' + ('.cn' if partition == 'aws-cn' else '')
    return f'{endpoint or host}/{account}/{name}'


class Cluster:
    """The services of cluster mode named in [Cluster]: the queue, the status table, SSM parameters (the
    keys of the other side, bucket pairs, the ignore list)."""

    def __init__(self, config: Config, need_queue: bool = True, keys: Optional[Tuple[str, str]] = None) -> None:
        import socket
        self.config = config
        self.clients: Dict[str, Any] = {}
        if need_queue and not config.SqsQueueUrl:
            raise ConfigError('[Cluster] SqsQueueUrl is empty: set the URL of the job queue')
        self.queue = self.queue_at(self._queue_url(config.SqsQueueUrl)) if config.SqsQueueUrl else None
        self.status = None
        if config.StatusTable:
            owner = f'{socket.gethostname()}:{os.getpid()}:{random.randrange(1 << 30):x}'
            # A lease ends a second before its message can be received again (the heartbeat renews the
            # lease after hiding the message): the next worker to receive it finds the object free, not busy.
            self.status = StatusTable(self.service('dynamodb'), config.StatusTable, owner, config.VisibilityTimeout - 1)
        self.credentials: Dict[str, Tuple[Any, str]] = {}      # side -> (keys, region), from a secret
        name = config.CredentialsParameter
        if keys:          # the serverless seed's aws_access_key_id / aws_secret_access_key
            import botocore.credentials
            SecretFilter.add(*keys)
            self.credentials = {config.CredentialsFor: (botocore.credentials.Credentials(*keys), '')}
        elif name.startswith('projects/'):         # 3GSync's GET mode: a GCP Secret Manager secret, on GCE
            self.credentials = secret_credentials(lambda: gcp_secret(name, config.SecretManagerEndpointURL),
                                                  f'GCP secret {name} (CredentialsParameter)', config.CredentialsFor)
        elif name:
            ssm = self.service('ssm')
            self.credentials = secret_credentials(
                lambda: ssm.get_parameter(Name=name, WithDecryption=True)['Parameter']['Value'],
                f'SSM parameter {name} (CredentialsParameter)', config.CredentialsFor)

    def service(self, name: str) -> Any:
        """The client of one AWS service of the cluster (sqs, dynamodb, ssm, cloudwatch), made once."""
        if name not in self.clients:
            endpoint = {'sqs': self.config.SqsEndpointURL, 'dynamodb': self.config.DynamoDBEndpointURL,
                        'ssm': self.config.SsmEndpointURL, 'cloudwatch': self.config.CloudWatchEndpointURL}[name]
            # metrics are worth no wait: what cannot be sent goes with the next minute's
            self.clients[name] = _service_client(self.config, name, endpoint, 2 if name == 'cloudwatch' else 10)
        return self.clients[name]

    def _queue_url(self, url_or_name: str) -> str:
        if url_or_name.startswith(('https://', 'http://')):
            return url_or_name
        try:
            return self.service('sqs').get_queue_url(QueueName=url_or_name)['QueueUrl']
        except Exception as error:  # noqa: BLE001 - one line for the user
            raise _cluster_error(f'cannot find SQS queue {url_or_name!r} (SqsQueueUrl)', error) from None

    def queue_at(self, url: str) -> 'JobQueue':
        return JobQueue(self.service('sqs'), url, self.config)

    def parameter(self, name: str, what: str) -> str:
        """The value of an SSM parameter (decrypted); ConfigError naming the setting when it cannot be read."""
        try:
            return self.service('ssm').get_parameter(Name=name, WithDecryption=True)['Parameter']['Value']
        except Exception as error:  # noqa: BLE001 - one line for the user
            raise _cluster_error(f'cannot read SSM parameter {name} ({what})', error) from None

    def check(self, create_table: bool = False) -> None:
        if self.queue is not None:
            self.queue.attributes()
        if self.status is not None:
            self.status.check(create_table)

    def s3(self, side: str, pool: int) -> Any:
        """The S3 client of one side; its keys from CredentialsParameter when that names this side."""
        if side in self.credentials:
            return client_for(self.config, side, pool, *self.credentials[side])
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


class JobFilter:
    """The ignore list (IgnoreListFile, and IgnoreListParameter read again each minute) applied to each job's
    bucket/key, as jobsender applies it to a listing: S3-event jobs are filtered too."""

    REFRESH_SECONDS = 60.0

    def __init__(self, config: Config, cluster: Cluster) -> None:
        self.from_file = Filters.from_config(config).ignore
        self.cluster = cluster
        self.parameter = config.IgnoreListParameter
        self.from_parameter: List[str] = []
        self.read_at = -self.REFRESH_SECONDS
        self.lock = threading.Lock()
        if self.parameter:
            self._refresh()

    def _refresh(self) -> None:
        with self.lock:
            if time.monotonic() - self.read_at < self.REFRESH_SECONDS:
                return
            try:
                patterns = Filters.patterns_in(self.cluster.parameter(self.parameter, 'IgnoreListParameter'))
            except ConfigError as error:
                if self.read_at < 0:
                    raise
                logger.warning('%s: keeping the ignore list read before', error)
                patterns = self.from_parameter
            if patterns != self.from_parameter and self.read_at >= 0:
                logger.info('ignore list %s changed: %d patterns', self.parameter, len(patterns))
            self.from_parameter, self.read_at = patterns, time.monotonic()

    def excluded(self, job: Job) -> str:
        """Why this job is left out ('' when it is copied)."""
        if self.parameter:
            self._refresh()
        return Filters(self.from_file + self.from_parameter).excluded(job.src_key, f'{job.src_bucket}/{job.src_key}')


class MeteredSource(S3Source):
    """An S3 source that counts the bytes it reads (the BytesRead metric)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_read = 0
        self.count_lock = threading.Lock()

    def _count(self, nbytes: int) -> None:
        with self.count_lock:
            self.bytes_read += nbytes

    def read(self, obj: SourceObject, offset: int, length: int) -> bytes:
        data = super().read(obj, offset, length)
        self._count(len(data))
        return data

    def fetch(self, obj: SourceObject) -> Tuple[bytes, Any]:
        data, info = super().fetch(obj)
        self._count(len(data))
        return data, info

    def fetch_async(self, obj: SourceObject, done: Callable[[Optional[Tuple[bytes, Any]], Optional[BaseException]], None]
                    ) -> bool:
        def counted(fetched: Optional[Tuple[bytes, Any]], error: Optional[BaseException]) -> None:
            if fetched is not None:
                self._count(len(fetched[0]))
            done(fetched, error)
        return super().fetch_async(obj, counted)


METRIC_UNITS = {'BytesRead': 'Bytes', 'BytesWritten': 'Bytes', 'ObjectsCompleted': 'Count', 'ObjectsFailed': 'Count',
                'ObjectsSkipped': 'Count', 'ObjectsResumed': 'Count', 'PartsSent': 'Count', 'Retries': 'Count'}


def emf_line(namespace: str, fleet: str, values: Dict[str, float]) -> str:
    """One CloudWatch Embedded Metric Format record: CloudWatch Logs makes metrics of it, no request needed."""
    return json.dumps({'_aws': {'Timestamp': int(time.time() * 1000), 'CloudWatchMetrics': [{
        'Namespace': namespace, 'Dimensions': [['Fleet']],
        'Metrics': [{'Name': name, 'Unit': METRIC_UNITS[name]} for name in values]}]}, 'Fleet': fleet, **values})


class FleetMetrics:
    """What one worker (or Lambda invocation) moved, sent every minute and at the end as the change since
    the last time: bytes read and written, objects completed / failed / skipped / resumed, parts, retries."""

    EVERY_SECONDS = 60.0

    def __init__(self, totals: Callable[[], Dict[str, float]], send: Callable[[Dict[str, float]], None]) -> None:
        self.totals = totals
        self.send = send
        self.sent = dict.fromkeys(METRIC_UNITS, 0.0)
        self.lock = threading.Lock()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._every_minute, name='metrics', daemon=True)
        self.thread.start()

    def _every_minute(self) -> None:
        while not self.ended.wait(self.EVERY_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            totals = self.totals()
            change = {name: totals[name] - self.sent[name] for name in METRIC_UNITS}
            if not any(change.values()):
                return
            try:
                self.send(change)
            except Exception as error:  # noqa: BLE001 - sent with the next minute's
                logger.warning('cannot publish metrics: %s', describe_error(error))
                return
            self.sent = totals

    def close(self) -> None:
        self.ended.set()
        self.thread.join()
        self.flush()


def metrics_sender(config: Config, cluster: 'Cluster', lambda_lines: bool) -> Optional[Callable[[Dict[str, float]], None]]:
    """How metrics leave: EMF lines on stdout (Lambda), PutMetricData (a worker); None without MetricsNamespace."""
    if not config.MetricsNamespace:
        return None
    namespace, fleet = config.MetricsNamespace, config.FleetName
    if lambda_lines:
        return lambda values: print(emf_line(namespace, fleet, values), flush=True)

    def put(values: Dict[str, float]) -> None:
        cluster.service('cloudwatch').put_metric_data(Namespace=namespace, MetricData=[
            {'MetricName': name, 'Dimensions': [{'Name': 'Fleet', 'Value': fleet}], 'Value': value,
             'Unit': METRIC_UNITS[name]} for name, value in values.items()])
    return put


class Worker:
    """Copies the jobs of queue messages through one Engine per bucket pair, MaxParallelFile at once;
    a message is deleted only when every job in it is complete and verified."""

    def __init__(self, config: Config, cluster: Cluster, stop: threading.Event, lambda_lines: bool = False) -> None:
        if config.CompareMode == 'size':     # a same-size object counts as done only if it is this source
            config = config.replace(CompareMode='identity')
        self.config = config
        self.cluster = cluster
        self.stop = stop
        self.retrier = Retrier(config.MaxRetry, stop)
        self.progress = Progress()
        self.journal = cluster.journal()
        self.engines: Dict[Tuple[str, str], Engine] = {}
        self.clients: Dict[str, Any] = {}
        self.lock = threading.Lock()
        self.job_filter = JobFilter(config, cluster)
        self.heartbeat = Heartbeat(config, cluster, stop, self.progress)
        send = metrics_sender(config, cluster, lambda_lines)
        self.metrics = FleetMetrics(self.moved, send) if send else None

    def moved(self) -> Dict[str, float]:
        """The totals the metrics publish."""
        p = self.progress.snapshot()
        with self.lock:
            read = sum(engine.source.bytes_read for engine in self.engines.values())
        return {'BytesRead': read, 'BytesWritten': p['bytes_transferred'] + p['bytes_copied_server_side'],
                'ObjectsCompleted': p['files_transferred'], 'ObjectsFailed': p['files_failed'],
                'ObjectsSkipped': p['files_skipped'] + p['files_excluded'], 'ObjectsResumed': p['files_resumed'],
                'PartsSent': p['parts_uploaded'], 'Retries': self.retrier.retries}

    def engine(self, job: Job) -> Engine:
        with self.lock:
            pair = (job.src_bucket, job.des_bucket)
            if pair not in self.engines:
                config, pool = self.config, self.config.MaxParallelFile + part_workers(self.config) + 4
                for side in ('Src', 'Des'):
                    if side not in self.clients:
                        self.clients[side] = self.cluster.s3(side, pool)
                source = MeteredSource(self.clients['Src'], job.src_bucket, '', '*', config.ListPageSize, self.retrier,
                                       config.RequestPayer == 'requester', config.CopyTags, config.CopyMetadata)
                source.resolve_versions = config.UpdateVersionId
                destination = Destination(self.clients['Des'], job.des_bucket, '', WriteOptions.from_config(config),
                                          config.ListPageSize, self.retrier)
                server_side = (not config.CredentialsParameter and
                               server_side_possible(config, self.clients['Src'], self.clients['Des']))
                if config.StorageClass != 'STANDARD':   # named as the store names it (GCS's classes): a listing says
                    destination.learn_store(check_bucket(self.clients['Des'], job.des_bucket, '', 'destination'))
                self.engines[pair] = Engine(config, source, destination, self.journal, self.retrier, self.progress,
                                            None, server_side)
            return self.engines[pair]

    def copy(self, job: Job, lease: Lease) -> str:
        """Claim and copy one object: 'done', 'busy' (another worker owns it), 'stopped' or 'failed'."""
        engine, status = self.engine(job), self.cluster.status
        wanted = job.version_id if self.config.GetObjectWithVersionId else ''
        try:
            obj = self.retrier.call(f'HeadObject (source) {job.src_key}', engine.source.current,
                                    SourceObject(job.src_key, 0, '', job.src_key, version_id=wanted))
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
        version_id = obj.version_id or job.version_id      # as asked for, resolved (UpdateVersionId) or queued
        if not self.config.GetObjectWithVersionId:
            obj = dataclasses.replace(obj, version_id='')    # reads take the current version (pinned to its ETag)
        if status is not None:
            claim, wait_seconds = status.claim(job, obj.version, obj.size, version_id)
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
            logger.error('FAILED %s: %s', job.name, error)
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
            excluded = self.job_filter.excluded(job)
            if excluded:
                logger.info('skip %s: %s', job.name, excluded)
                self.progress.add(files_excluded=1)
                continue
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
            else:
                received = int(message.get('Attributes', {}).get('ApproximateReceiveCount', '1'))
                queue.hide(receipt, self.visible_again_in(outcome, lease, received))
        finally:
            self.heartbeat.end(lease)

    def visible_again_in(self, outcome: str, lease: Lease, received: int) -> int:
        """Seconds until a message not done is received again: at once when stopped, after the other owner's
        lease when busy, with backoff (by its receive count) when failed."""
        if outcome == 'stopped':
            return 0
        if outcome == 'busy':
            return int(min(self.config.VisibilityTimeout, lease.retry_after + 1))
        return min(self.config.VisibilityTimeout, 5 * 2 ** received)

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
        if self.metrics is not None:
            self.metrics.close()


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


@dataclasses.dataclass(frozen=True)
class Pair:
    """A source bucket/prefix and the destination bucket/prefix its objects are copied to."""
    src_bucket: str
    src_prefix: str
    des_bucket: str
    des_prefix: str

    def __str__(self) -> str:
        return f's3://{self.src_bucket}/{self.src_prefix} -> s3://{self.des_bucket}/{self.des_prefix}'

    def applied(self, config: Config) -> Config:
        """The config of a job that copies this pair."""
        return config.replace(SrcBucket=self.src_bucket, SrcPrefix=self.src_prefix, DesBucket=self.des_bucket,
                              S3Prefix=self.des_prefix)


def bucket_pairs(config: Config, cluster: Cluster) -> List[Pair]:
    """What jobsender compares: BucketPairs (or the SSM parameter BucketPairsParameter names); when they list
    none (empty or []), the one pair SrcBucket/SrcPrefix -> DesBucket/S3Prefix."""
    text, where = config.BucketPairs, 'BucketPairs'
    if config.BucketPairsParameter:
        text = cluster.parameter(config.BucketPairsParameter, 'BucketPairsParameter')
        where = f'SSM parameter {config.BucketPairsParameter} (BucketPairsParameter)'
    try:
        pairs = [Pair(str(pair['src_bucket']), str(pair.get('src_prefix') or ''), str(pair['des_bucket']),
                      str(pair.get('des_prefix') or '')) for pair in json.loads(text or '[]')]
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f'{where} must be a JSON list of {{"src_bucket", "src_prefix", "des_bucket", "des_prefix"}} '
                          f'({type(error).__name__}: {error}): fix it') from None
    if pairs:
        return pairs
    if not config.SrcBucket:
        raise ConfigError(f'jobsender needs SrcBucket or a bucket pair in {where}: set one')
    return [Pair(config.SrcBucket, config.SrcPrefix, config.DesBucket, config.S3Prefix)]


class ListingCursor:
    """Where a jobsender run that ran out of time stopped listing each pair (the last source key handled), so
    the next run goes on from there: in the status table, else in a file in LogDir."""

    def __init__(self, config: Config, status: Optional[StatusTable]) -> None:
        self.status = status
        self.path = os.path.join(config.LogDir, 's3_upload-jobsender-cursor.json')

    def _cursors(self) -> Dict[str, str]:
        """The file's cursors by pair ({} when there is none)."""
        try:
            with open(self.path, encoding='utf-8') as handle:
                return dict(json.load(handle))
        except (OSError, ValueError, TypeError):
            return {}

    def get(self, pair: Pair) -> str:
        if self.status is not None:
            return self.status.noted(f'jobsender#{pair}')
        return str(self._cursors().get(str(pair), ''))

    def put(self, pair: Pair, after: Optional[str]) -> None:
        """Remember where the listing of pair stopped; None: it finished (the next run starts over)."""
        if self.status is not None:
            self.status.note(f'jobsender#{pair}', after)
            return
        cursors = self._cursors()
        cursors.pop(str(pair), None)
        if after is not None:
            cursors[str(pair)] = after
        os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
        with open(self.path + '.tmp', 'w', encoding='utf-8') as handle:
            json.dump(cursors, handle)
        os.replace(self.path + '.tmp', self.path)


class ListedSource(S3Source):
    """The source objects after one key (where the last run stopped); with versions=True, the current version
    of each (ListObjectVersions) with its versionId."""

    after = ''
    versions = False

    def objects(self) -> Iterator[SourceObject]:
        if self.versions:
            yield from self._current_versions()
            return
        extra = {**self.extra, **({'StartAfter': self.after} if self.after else {})}
        for item in list_objects(self.client, self.bucket, self.prefix, self.page_size, self.retry, extra):
            yield self._describe(item['Key'], item['Size'], item.get('ETag', ''))

    def _current_versions(self) -> Iterator[SourceObject]:
        args: Dict[str, Any] = {'Bucket': self.bucket, 'Prefix': self.prefix, 'MaxKeys': self.page_size, **self.extra}
        if self.after:
            args['KeyMarker'] = self.after
        while True:
            assert self.retry is not None
            page = self.retry.call(f'ListObjectVersions {self.bucket}/{self.prefix}', self.client.list_object_versions,
                                   **args)
            for item in page.get('Versions', []):
                if item.get('IsLatest'):
                    version_id = '' if item.get('VersionId') in (None, 'null') else item['VersionId']
                    yield dataclasses.replace(self._describe(item['Key'], item['Size'], item.get('ETag', '')),
                                              version_id=version_id)
            if not page.get('IsTruncated') or not page.get('NextKeyMarker'):
                return
            args.update(KeyMarker=page['NextKeyMarker'], VersionIdMarker=page.get('NextVersionIdMarker', ''))


class ListedDestination(Destination):
    """The destination objects after one relative key (where the source listing resumes)."""

    after = ''

    def objects(self) -> Iterator[Tuple[str, int, str]]:
        extra = {**self.payer, **({'StartAfter': self.prefix + self.after} if self.after else {})}
        for item in list_objects(self.client, self.bucket, self.prefix, self.page_size, self.retry, extra):
            yield item['Key'][len(self.prefix):], item['Size'], item.get('ETag', '')


class InventoryIndex(DestinationIndex):
    """DestinationIndex for an inventory: a key out of the inventory's order is asked of the destination by
    HEAD instead of indexing the whole destination in memory."""

    def lookup(self, key: str) -> Optional[Tuple[int, str]]:
        if key < self.last_asked:
            head = self.destination.head(self.destination.key_for(key))
            return (head.size, head.etag) if head is not None else None
        return super().lookup(key)


class InventoryReport:
    """An S3 Inventory report in CSV, as AWS writes it: manifest.json names gzipped CSV files (fields as its
    fileSchema says, keys URL-encoded) and the MD5 of each."""

    def __init__(self, client: Any, url: str, retrier: Retrier) -> None:
        if not url.startswith('s3://') or '/' not in url[5:]:
            raise ConfigError(f'--inventory {url}: give the manifest as s3://BUCKET/PATH/manifest.json')
        self.client, self.retrier, self.url = client, retrier, url
        self.bucket, _, key = url[5:].partition('/')
        try:
            manifest = json.loads(self._body(key).read())
            self.columns = [column.strip() for column in manifest['fileSchema'].split(',')]
            self.files = [(str(item['key']), str(item['MD5checksum']).lower()) for item in manifest['files']]
            self.source_bucket, file_format = str(manifest['sourceBucket']), manifest['fileFormat']
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f'{url} is not an S3 Inventory manifest ({type(error).__name__}: {error})') from None
        if file_format != 'CSV':
            raise ConfigError(f'{url}: the inventory is in {file_format}; only CSV inventories are read: '
                              'configure the report with format CSV')
        missing = {'Bucket', 'Key', 'Size'} - set(self.columns)
        if missing:
            raise ConfigError(f'{url}: the inventory has no {", ".join(sorted(missing))} field: add it to the '
                              "report's optional fields")

    def _body(self, key: str) -> Any:
        try:
            return self.retrier.call(f'GetObject s3://{self.bucket}/{key}', self.client.get_object,
                                     Bucket=self.bucket, Key=key)['Body']
        except Exception as error:  # noqa: BLE001 - one line for the user
            raise ConfigError(f'cannot read s3://{self.bucket}/{key} of the inventory: {describe_error(error)}') from None

    def check(self) -> None:
        """Every file's MD5 against the manifest's, before anything is queued (read in chunks: memory stays flat)."""
        import hashlib
        for key, expected in self.files:
            digest, body = hashlib.md5(), self._body(key)
            for chunk in iter(lambda: body.read(1 << 20), b''):
                digest.update(chunk)
            if digest.hexdigest() != expected:
                raise ConfigError(f'inventory file s3://{self.bucket}/{key} has MD5 {digest.hexdigest()}, its manifest '
                                  f'says {expected}: the file is damaged or of another report; nothing was queued')

    def objects(self, prefix: str) -> Iterator[SourceObject]:
        """The current objects below prefix (delete markers and older versions left out), streamed."""
        import csv
        import gzip
        import io
        from urllib.parse import unquote_plus
        base = prefix + '/' if prefix else ''
        for key, _ in self.files:
            with gzip.GzipFile(fileobj=self._body(key)) as unzipped:
                for row in csv.reader(io.TextIOWrapper(unzipped, encoding='utf-8', newline='')):
                    record = dict(zip(self.columns, row))
                    if record.get('IsLatest', 'true').lower() == 'false' or \
                            record.get('IsDeleteMarker', 'false').lower() == 'true' or record['Bucket'] != self.source_bucket:
                        continue
                    full_key = unquote_plus(record['Key'])
                    if not full_key.startswith(base):
                        continue
                    etag, version_id = record.get('ETag', ''), record.get('VersionId', '')
                    yield SourceObject(full_key[len(base):], int(record['Size'] or 0), f'"{etag}"' if etag else '',
                                       full_key, version_id='' if version_id == 'null' else version_id)


class JobSender:
    """Jobsender: one message per object a destination lacks (as the CLI would copy it); objects already queued
    or running per the status table are not sent again."""

    COUNTS = ('listed', 'queued', 'at_destination', 'already_queued', 'excluded', 'failed', 'pairs_failed', 'unfinished')
    CURSOR_EVERY = 1000      # objects handled between saves of the listing cursor (a killed run redoes fewer)

    def __init__(self, config: Config, cluster: Cluster, dry_run: bool = False, out: Any = None) -> None:
        if config.JobType != 'S3_TO_S3':
            raise ConfigError('jobsender needs JobType = S3_TO_S3 (the workers read the source from S3)')
        self.config, self.cluster, self.dry_run, self.out = config, cluster, dry_run, out
        self.retrier = Retrier(config.MaxRetry, threading.Event())
        self.source_client, self.destination_client = cluster.s3('Src', 16), cluster.s3('Des', 16)
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.lock = threading.Lock()
        self.cursor = ListingCursor(config, cluster.status)
        self.stale_before = 0.0
        if cluster.queue is not None:
            retention = int(cluster.queue.attributes().get('MessageRetentionPeriod', '345600'))
            self.stale_before = time.time() - retention     # a message queued earlier than this is gone

    def count(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[name] += amount

    TURN = 'jobsender#turn'

    def run(self, time_up: Optional[Callable[[], bool]] = None, inventory: str = '') -> Dict[str, int]:
        """Every bucket pair (or the inventory's); a pair that cannot be listed is reported and the others go on.
        time_up: stop listing when it says so; the next run goes on from there. With a status table, one
        jobsender runs at a time (a scheduled one finding another at work leaves it the turn)."""
        status = self.cluster.status
        if status is not None and not self.dry_run:
            holder = status.take_turn(self.TURN, 3600 if time_up is None else 960)    # a Lambda lasts 15 minutes
            if holder:
                logger.warning('another jobsender (%s) is running: leaving it the turn', holder)
                self.count('unfinished')
                return self.counts
        try:
            return self._run(time_up, inventory)
        finally:
            if status is not None and not self.dry_run:
                status.end_turn(self.TURN)

    def _run(self, time_up: Optional[Callable[[], bool]], inventory: str) -> Dict[str, int]:
        pairs = bucket_pairs(self.config, self.cluster)
        if inventory:
            self.send_inventory(InventoryReport(self.source_client, inventory, self.retrier), pairs)
            return self.counts
        for pair in pairs:
            try:
                finished = self.send_pair(pair, time_up)
            except Exception as error:  # noqa: BLE001 - this pair is reported; the others go on
                logger.error('cannot compare %s: %s', pair, str(error) if isinstance(error, ConfigError)
                             else describe_error(error))
                self.count('pairs_failed')
                continue
            if not finished:
                self.count('unfinished')
                break
        return self.counts

    def _sides(self, config: Config) -> Tuple[ListedSource, ListedDestination]:
        check_bucket(self.source_client, config.SrcBucket, config.SrcPrefix, 'source')
        check_bucket(self.destination_client, config.DesBucket, config.S3Prefix, 'destination')
        source = ListedSource(self.source_client, config.SrcBucket, config.SrcPrefix, '*', config.ListPageSize,
                             self.retrier, config.RequestPayer == 'requester')
        destination = ListedDestination(self.destination_client, config.DesBucket, config.S3Prefix,
                                       WriteOptions.from_config(config), config.ListPageSize, self.retrier)
        return source, destination

    def send_pair(self, pair: Pair, time_up: Optional[Callable[[], bool]]) -> bool:
        """Compare one pair and queue what is missing; False when time ran out first (where it stopped is kept)."""
        config = pair.applied(self.config)
        if time_up is None and not config.JobsenderCompareVersionId:
            with ThreadPoolExecutor(8, 'list') as pool:
                for future in [pool.submit(self.send_tasks, config, source.objects(), destination)
                               for source, destination in
                               _folder_plans(config, self.source_client, self.destination_client, self.retrier)]:
                    future.result()
            return True
        source, destination = self._sides(config)
        source.versions = config.JobsenderCompareVersionId
        source.after = self.cursor.get(pair) if time_up else ''
        if source.after:
            logger.info('%s: going on after %s, where the last run stopped', pair, source.after)
            destination.after = source.after[len(source.prefix):]
        finished = self.send_tasks(config, source.objects(), destination, time_up=time_up,
                                   stopped_at=lambda key: self.cursor.put(pair, key))
        if finished and time_up is not None:
            self.cursor.put(pair, None)
        return finished

    def send_inventory(self, report: InventoryReport, pairs: List[Pair]) -> None:
        """Queue the inventory's objects that the destination lacks, without listing the source bucket."""
        pair = next((p for p in pairs if p.src_bucket == report.source_bucket), None)
        if pair is None:
            raise ConfigError(f'{report.url} is an inventory of bucket {report.source_bucket}, which no bucket pair '
                              'copies: set SrcBucket (or BucketPairs) to it')
        report.check()
        config = pair.applied(self.config)
        check_bucket(self.destination_client, config.DesBucket, config.S3Prefix, 'destination')
        destination = Destination(self.destination_client, config.DesBucket, config.S3Prefix,
                                  WriteOptions.from_config(config), config.ListPageSize, self.retrier)
        self.send_tasks(config, report.objects(config.SrcPrefix), destination, index=InventoryIndex(destination))

    def send_tasks(self, config: Config, objects: Iterable[SourceObject], destination: Destination, index: Any = None,
                   time_up: Optional[Callable[[], bool]] = None,
                   stopped_at: Callable[[str], None] = lambda key: None) -> bool:
        """Plan one listing against its destination and queue, ten per message batch, what it lacks; False when
        time_up said stop (stopped_at is told the last source key handled, also every CURSOR_EVERY objects)."""

        def match_name(obj: SourceObject) -> str:
            return f'{config.SrcBucket}/{obj.location}'
        batch: List[Job] = []
        handled, last = 0, ''
        for task in plan(objects, destination, Filters.from_config(config), match_name, config.CompareMode, index):
            if time_up is not None and time_up():
                self.flush(batch)
                stopped_at(last)
                logger.info('out of time: s3://%s listed up to %s; the next run goes on from there',
                            config.SrcBucket, last)
                return False
            self.consider(config, task, destination, batch)
            handled, last = handled + 1, task.source.location
            if len(batch) == 10:
                self.flush(batch)
            if handled % self.CURSOR_EVERY == 0 and time_up is not None:
                self.flush(batch)
                stopped_at(last)
        self.flush(batch)
        return True

    def consider(self, config: Config, task: Task, destination: Destination, batch: List[Job]) -> None:
        """Count one planned object, and add its job to batch when the destination lacks it."""
        self.count('listed')
        if task.action in ('exclude', 'fail'):
            self.count({'exclude': 'excluded', 'fail': 'failed'}[task.action])
            if task.action == 'fail':
                logger.error('FAILED %s: %s', task.key, task.reason)
            return
        job = Job(config.SrcBucket, task.source.location, config.DesBucket, task.key, task.source.size,
                  task.source.version_id)
        if task.action in ('skip', 'check') and config.JobsenderCompareVersionId:
            if self.recorded_version(job, destination) == job.version_id:
                self.count('at_destination')
                return
        elif task.action == 'skip':
            self.count('at_destination')
            return
        if self.dry_run:
            self.count('queued')
            print(f'queue    {job.src_key} -> s3://{job.name}  {job.size}', file=self.out)
            return
        if self.cluster.status is not None and not self.cluster.status.mark_queued(job, task.source.version,
                                                                                   self.stale_before):
            self.count('already_queued')
            return
        batch.append(job)

    def recorded_version(self, job: Job, destination: Destination) -> str:
        """The source versionId the copy at the destination was made from: as the status table recorded it,
        else as the object's stamp says."""
        if self.cluster.status is not None:
            item = self.cluster.status.get(job.name)
            if item and item.get('state') == 'done' and item.get('version_id'):
                return str(item['version_id'])
        head = self.retrier.call(f'HeadObject {job.des_key}', destination.head, job.des_key)
        return head.metadata.get('s3u-src-version-id', '') if head is not None else ''

    def flush(self, batch: List[Job]) -> None:
        """Send the batch (one SendMessageBatch); jobs that cannot be queued are counted and marked failed."""
        try:
            if batch and self.cluster.queue is not None:
                self.cluster.queue.send(batch)
                self.count('queued', len(batch))
        except Exception as error:  # noqa: BLE001 - counted and shown; the status says so too
            logger.error('%s', describe_error(error))
            self.count('failed', len(batch))
            for job in batch:
                if self.cluster.status is not None:
                    self.cluster.status.finish(job, 'could not be queued', 0)
        batch.clear()


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
        print(f'FAILED s3://{item[cluster.status.key]}  (attempts {int(item.get("attempts", 0))}): '
              f'{item.get("last_error", "")}', file=out)
    return EXIT_FAILED if failed else EXIT_OK


@dataclasses.dataclass
class FleetState:
    """The whole fleet at one moment, from the status table and the queue."""
    at: float
    objects: Dict[str, int]          # state -> objects
    bytes_done: float                # of the done objects, and what the running ones have sent
    bytes_total: float
    failures: Dict[str, str]         # object -> its last error
    waiting: str = '?'
    in_flight: str = '?'

    @classmethod
    def read(cls, cluster: Cluster) -> 'FleetState':
        assert cluster.status is not None
        state = cls(time.monotonic(), dict.fromkeys(('queued', 'running', 'done', 'failed'), 0), 0.0, 0.0, {})
        for item in cluster.status.items():
            name, size = str(item.get('state', '?')), float(item.get('size', 0) or 0)
            state.objects[name] = state.objects.get(name, 0) + 1
            state.bytes_total += max(size, 0)
            state.bytes_done += size if name == 'done' else float(item.get('bytes', 0) or 0) if name == 'running' else 0
            if name == 'failed':
                state.failures[str(item[cluster.status.key])] = f'(attempts {int(item.get("attempts", 0))}): ' \
                                                                f'{item.get("last_error", "")}'
        if cluster.queue is not None:
            counts = cluster.queue.attributes()
            state.waiting = counts.get('ApproximateNumberOfMessages', '?')
            state.in_flight = counts.get('ApproximateNumberOfMessagesNotVisible', '?')
        return state

    def line(self, before: Optional['FleetState']) -> str:
        """One line: objects done / total, bytes, bytes per second and ETA (against the state before), queue."""
        total = sum(self.objects.values())
        rate = (self.bytes_done - before.bytes_done) / max(self.at - before.at, 1e-3) if before else 0.0
        left = self.bytes_total - self.bytes_done
        seconds = int(left / rate) if rate > 0 else -1
        eta = ('done' if total and self.objects['done'] == total else
               f'{seconds // 3600}:{seconds % 3600 // 60:02}:{seconds % 60:02}' if seconds >= 0 else '-')
        return (f'{time.strftime("%H:%M:%S")}  objects {self.objects["done"]}/{total} done, '
                f'{self.objects["running"]} running, {self.objects["queued"]} queued, {self.objects["failed"]} failed'
                f' | {human_bytes(self.bytes_done)} of {human_bytes(self.bytes_total)} | '
                f'{human_bytes(max(rate, 0))}/s | ETA {eta} | queue: {self.waiting} waiting, {self.in_flight} in flight')


def watch_status(cluster: Cluster, out: Any, every: float) -> int:
    """status --watch: a line every `every` seconds and each new failure with its reason, until Ctrl-C."""
    if cluster.status is None:
        raise ConfigError('status --watch needs [Cluster] StatusTable')
    before: Optional[FleetState] = None
    shown: Dict[str, str] = {}
    try:
        while True:
            now = FleetState.read(cluster)
            print(now.line(before), file=out, flush=True)
            for name, why in now.failures.items():
                if shown.get(name) != why:
                    print(f'  FAILED s3://{name} {why}', file=out, flush=True)
            shown, before = now.failures, now
            time.sleep(every)
    except KeyboardInterrupt:
        return EXIT_OK


def _queue_arn(cluster: Cluster) -> str:
    if cluster.queue is None:
        raise ConfigError('[Cluster] SqsQueueUrl is empty: set the queue the notifications go to')
    return cluster.queue.attributes()['QueueArn']


def _rules_text(configuration: Dict[str, Any]) -> str:
    rules = configuration.get('Filter', {}).get('Key', {}).get('FilterRules', [])
    return ' '.join(f'{rule["Name"].lower()}={rule["Value"]}' for rule in rules) or '(whole bucket)'


def list_triggers(client: Any, bucket: str, out: Any) -> int:
    """Print every event notification of a bucket: kind, target, events, key filter (list_trigger.py)."""
    try:
        current = client.get_bucket_notification_configuration(Bucket=bucket)
    except Exception as error:  # noqa: BLE001 - one line for the user
        raise ConfigError(f'cannot read the notifications of bucket {bucket}: {describe_error(error)}') from None
    found = 0
    for kind, target in (('QueueConfigurations', 'QueueArn'), ('TopicConfigurations', 'TopicArn'),
                         ('LambdaFunctionConfigurations', 'LambdaFunctionArn')):
        for configuration in current.get(kind, []):
            found += 1
            print(f'{kind[:-14].lower():6} {configuration[target]}  {",".join(configuration["Events"])}  '
                  f'{_rules_text(configuration)}  (id {configuration.get("Id", "")})', file=out)
    if 'EventBridgeConfiguration' in current:
        print('eventbridge (all events of the bucket)', file=out)
    if not found:
        print(f'bucket {bucket} sends no notifications to queues, topics or functions', file=out)
    return EXIT_OK


def add_triggers(client: Any, bucket: str, queue_arn: str, prefixes: List[str], out: Any) -> int:
    """Send ObjectCreated events of each prefix ('' = the whole bucket) to the queue, keeping every
    notification the bucket already has (add_trigger.py)."""
    try:
        current = client.get_bucket_notification_configuration(Bucket=bucket)
    except Exception as error:  # noqa: BLE001 - one line for the user
        raise ConfigError(f'cannot read the notifications of bucket {bucket}: {describe_error(error)}') from None
    current.pop('ResponseMetadata', None)
    queues = current.setdefault('QueueConfigurations', [])
    present = {_rules_text(q) for q in queues if q['QueueArn'] == queue_arn}
    added = []
    for prefix in dict.fromkeys(prefixes):
        rules = [{'Name': 'prefix', 'Value': prefix}] if prefix else []
        wanted = {'Events': ['s3:ObjectCreated:*'], 'QueueArn': queue_arn,
                  'Id': f's3_upload-{prefix or "all"}'[:255], **({'Filter': {'Key': {'FilterRules': rules}}} if rules else {})}
        if _rules_text(wanted) in present:
            print(f'already there: {_rules_text(wanted)}', file=out)
            continue
        queues.append(wanted)
        added.append(prefix)
    if added:
        try:
            client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)
        except Exception as error:  # noqa: BLE001 - one line for the user
            raise ConfigError(f'cannot set the notifications of bucket {bucket}: {describe_error(error)}: overlapping '
                              'prefixes of one event type are refused by S3, and the queue policy must let '
                              's3.amazonaws.com send (deploy/ templates set it)') from None
    for prefix in added:
        print(f'added: s3://{bucket}/{prefix}* -> {queue_arn}', file=out)
    return EXIT_OK


def read_prefixes(path: str) -> List[str]:
    """One prefix per line (prefix_list.txt of the seeds); '*' or '/' is the whole bucket; # comments."""
    try:
        with open(path, encoding='utf-8-sig') as handle:
            lines = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith('#')]
    except OSError as error:
        raise ConfigError(f'cannot read --prefixes {path}: {error.strerror}: fix the path') from None
    if not lines:
        raise ConfigError(f'--prefixes {path} lists no prefix: write one per line')
    return ['' if line in ('*', '/') else line.lstrip('/') for line in lines]


def build_cluster_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='s3_upload_cluster.py', description='A worker fleet fed by an SQS queue ([Cluster] in the config).')
    commands = parser.add_subparsers(dest='command', required=True)
    for name, text in (('jobsender', 'queue one message per object the destination lacks'),
                       ('worker', 'copy the queued objects (long-polls SQS; SIGTERM stops gracefully)'),
                       ('status', 'print totals per state, the queue depth and the failed objects'),
                       ('triggers', 'send the source bucket\'s new objects to the queue (S3 event notifications)')):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument('--config', metavar='PATH', help='ini file (default: s3_upload_config.ini beside the script)')
        command.add_argument('--set', metavar='KEY=VALUE', action='append', default=[], help='override a config key')
        if name == 'jobsender':
            command.add_argument('--dry-run', action='store_true', help='print the jobs and counts; send nothing')
            command.add_argument('--inventory', metavar='S3_URL', default='',
                                 help='take the objects from an S3 Inventory report (s3://BUCKET/PATH/manifest.json, '
                                      'CSV) instead of listing the source bucket')
        if name == 'status':
            command.add_argument('--watch', action='store_true', help='one live view of the whole fleet until Ctrl-C: '
                                 'objects done / total, bytes per second, ETA, failures with their reason')
            command.add_argument('--every', metavar='SECONDS', type=float, default=10.0,
                                 help='--watch: seconds between lines (default 10)')
        if name == 'worker':
            command.add_argument('--once', action='store_true', help='exit when the queue is empty (nothing waiting '
                                                                     'or in flight)')
            command.add_argument('--report', metavar='PATH', help='write a JSON summary on exit')
        if name == 'triggers':
            command.add_argument('action', choices=('add', 'list'), help='add: notify the queue of ObjectCreated '
                                 'events below each prefix, keeping the bucket\'s other notifications; list: print them')
            command.add_argument('--prefixes', metavar='FILE', help='add: one prefix per line (* = the whole bucket)')
            command.add_argument('--bucket', metavar='NAME', help='the source bucket (default: SrcBucket)')
    return parser


CLUSTER_COMMANDS = ('jobsender', 'worker', 'status', 'triggers')


def exit_now(code: int) -> None:
    """A worker asked twice to stop: its jobs come back to the queue after their visibility timeout."""
    logging.shutdown()
    os._exit(code)


def run_triggers(args: argparse.Namespace, config: Config, cluster: Cluster) -> int:
    bucket = args.bucket or config.SrcBucket
    if not bucket:
        raise ConfigError('triggers: name the bucket with --bucket or SrcBucket')
    client = cluster.s3('Src', 4)
    if args.action == 'list':
        return list_triggers(client, bucket, sys.stdout)
    if not args.prefixes:
        raise ConfigError('triggers add needs --prefixes FILE (one prefix per line)')
    return add_triggers(client, bucket, _queue_arn(cluster), read_prefixes(args.prefixes), sys.stdout)


def main(argv: Optional[List[str]] = None) -> int:
    """`jobsender`, `worker`, `status` and `triggers`: exit 0 done, 1 some objects failed, 2 bad input, 130/143 stopped."""
    args = build_cluster_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config or default_config_path(), parse_overrides(args.set), dict(os.environ))
        setup_logging(config)
        for warning in config.warnings:
            logger.warning('%s', warning)
        cluster = Cluster(config, need_queue=args.command not in ('status', 'triggers'))
        if args.command == 'triggers':
            return run_triggers(args, config, cluster)
        cluster.check(create_table=args.command == 'jobsender')
        if args.command == 'status':
            return (watch_status(cluster, sys.stdout, max(0.5, args.every)) if args.watch
                    else show_status(config, cluster, sys.stdout))
        if args.command == 'jobsender':
            counts = JobSender(config, cluster, args.dry_run, sys.stdout).run(inventory=args.inventory)
            print(('dry run: ' if args.dry_run else '') + ', '.join(f'{v} {k.replace("_", " ")}'
                                                                     for k, v in counts.items()), file=sys.stderr)
            return EXIT_FAILED if counts['failed'] or counts['pairs_failed'] else EXIT_OK
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


def _lambda_config() -> Config:
    """Lambda: the config (S3_UPLOAD_CONFIG, S3UPLOAD_<Key> and the seed's variable names); logs to its stream
    (filtered for secrets); journal and logs below /tmp."""
    config = load_config(os.environ.get('S3_UPLOAD_CONFIG') or default_config_path(),
                         original_environment(dict(os.environ)), dict(os.environ))
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
        config = config.replace(LogDir=os.path.join('/tmp', config.LogDir))
    return config


def _lambda_keys() -> Optional[Tuple[str, str]]:
    """The serverless seed's keys of the other side (aws_access_key_id / aws_secret_access_key, lower case)."""
    keys = os.environ.get('aws_access_key_id'), os.environ.get('aws_secret_access_key')
    return (keys[0], keys[1]) if keys[0] and keys[1] else None


def _out_of_time(context: Any, config: Config) -> Callable[[], bool]:
    return lambda: context.get_remaining_time_in_millis() < config.StopBeforeTimeout * 1000


def lambda_handler(event: Dict[str, Any], context: Any) -> Dict[str, Any]:
    """AWS Lambda entry point for an SQS trigger (ReportBatchItemFailures on): the same worker, one
    invocation at a time. No new part starts once the remaining time is below StopBeforeTimeout; a message
    stopped for time is made visible again at once (ChangeMessageVisibility 0, its queue from the record's
    eventSourceARN), so the next invocation resumes it within seconds from the parts already uploaded."""
    try:
        config = _lambda_config()
        stop = threading.Event()
        cluster = Cluster(config, need_queue=False, keys=_lambda_keys())
        if cluster.status is not None:
            cluster.status.check()
        worker = Worker(config, cluster, stop, lambda_lines=True)
    except ConfigError as error:
        logger.error('%s', error)
        raise
    out_of_time = _out_of_time(context, config)
    finished = threading.Event()

    def watch_clock() -> None:
        while not finished.wait(0.2):
            if out_of_time():
                logger.warning('%d s left in this invocation: finishing the parts in flight, resuming next time',
                               context.get_remaining_time_in_millis() // 1000)
                stop.set()
                return

    def queue_of(record: Dict[str, Any]) -> Optional[JobQueue]:
        arn = record.get('eventSourceARN', '')
        return cluster.queue_at(queue_url_of(arn, config.SqsEndpointURL)) if arn else cluster.queue

    def run(record: Dict[str, Any]) -> bool:
        queue = queue_of(record)
        lease = worker.heartbeat.watch(Lease(record.get('receiptHandle', '') if queue is not None else ''))
        try:
            outcome = worker.process(record.get('body', ''), lease)
        except BadMessage as error:
            logger.error('message %s is not a job (%s)', record.get('messageId'), error)
            outcome = 'stopped'          # back at once: its receive count sends it to the dead-letter queue
        except Exception as error:  # noqa: BLE001 - this message comes back; the others go on
            logger.error('message %s: %s', record.get('messageId'), describe_error(error))
            outcome = 'failed'
        finally:
            worker.heartbeat.end(lease)
        if outcome != 'done' and queue is not None and record.get('receiptHandle'):
            received = int(record.get('attributes', {}).get('ApproximateReceiveCount', '1'))
            queue.hide(record['receiptHandle'], worker.visible_again_in(outcome, lease, received))
        return outcome == 'done'

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


def jobsender_handler(event: Dict[str, Any], context: Any) -> Dict[str, int]:
    """AWS Lambda entry point for the scheduled Jobsender (an EventBridge rule, hourly): every bucket pair
    compared and what the destinations lack queued. A listing that runs out of time stops before the
    invocation does, and the next run goes on where it stopped."""
    config = _lambda_config()
    cluster = Cluster(config, keys=_lambda_keys())
    cluster.check()
    counts = JobSender(config, cluster).run(time_up=_out_of_time(context, config))
    logger.info('jobsender: %s', ', '.join(f'{v} {k.replace("_", " ")}' for k, v in counts.items()))
    return counts


if __name__ == '__main__':
    leave(main())

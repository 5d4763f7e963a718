#!/usr/bin/env python3
"""s3_upload: multi-threaded, resumable migration of files and objects into Amazon S3.

Moves a local folder (LOCAL_TO_S3) or a bucket/prefix of another S3 account, region,
partition or S3-compatible store (S3_TO_S3) into an S3 bucket. Big files travel as
multipart uploads, many parts and many files at once; data from S3 passes through
memory one part at a time and never touches the local disk. Kill it at any moment and
run it again: it asks the destination which parts already arrived, proves they belong
to the current source, and sends only the rest. Every request carries a checksum the
store verifies (CRC64NVME where it is found to check it, else Content-MD5), and every
finished object is checked against the value computed from the parts.

Usage::

    python3 s3_upload.py --nogui                       # run the job in s3_upload_config.ini
    python3 s3_upload.py --nogui --config job.ini --report report.json
    python3 s3_upload.py --nogui --set MaxThread=10 --set S3Prefix=backup
    python3 s3_upload.py --demo                        # a real transfer to a local S3 (moto)
    python3 s3_upload.py --gui                         # the Tkinter window (default on Windows)

Many machines: s3_upload_cluster.py, the worker fleet (SQS, DynamoDB, Lambda), uses this file as its engine::

    python3 s3_upload_cluster.py jobsender|worker|status --config job.ini

A minimal ini names only what the job needs::

    [Basic]
    JobType = LOCAL_TO_S3
    DesBucket = my-bucket

    [LOCAL_TO_S3]
    SrcDir = /data/to/upload

As a library::

    config = Config.load('job.ini', overrides={'MaxThread': '10'})
    report = run_job(config)
    print(report.files_transferred, report.bytes_transferred)

Exit codes: 0 every selected file is at the destination and verified; 1 some files
failed (the others are done); 2 bad input or configuration, found before any transfer;
130 / 143 stopped by Ctrl-C / SIGTERM (everything left resumable).
"""

from __future__ import annotations

__version__ = '2.0.0'
__license__ = 'MIT-0'

import argparse
import base64
import collections
import configparser
import contextlib
import dataclasses
import datetime
import errno
import fnmatch
import gc
import hashlib
import io
import json
import logging
import marshal
import math
import mimetypes
import os
import random
import re
import shutil
import signal
import stat
import sys
import textwrap
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

logger = logging.getLogger('s3_upload')

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_OBJECT_SIZE = 5 * TiB
MAX_PUT_SIZE = 5 * GiB
MAX_KEY_BYTES = 1024

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


###############################################################################
# Errors and helpers ##########################################################
###############################################################################

class ConfigError(Exception):
    """Bad input found before any transfer: one line for the user, exit code 2."""


class Stopped(Exception):
    """The user asked to stop; the work in hand is left resumable."""


class RestartFile(Exception):
    """This file must be copied again from the start (its source or its upload changed)."""


class SourceChanged(RestartFile):
    """The source object changed while it was being copied."""


class PartsRefused(Exception):
    """CompleteMultipartUpload refused a part (InvalidPart): find it and send it again."""


class UploadLost(RestartFile):
    """The multipart upload is gone or cannot be completed (aborted elsewhere, dropped or refused by the
    store): the file starts over."""


class SourceGone(Exception):
    """The source object vanished or became unreadable: this file fails."""


class VerifyError(Exception):
    """The finished destination object does not match the source."""


class ServerSideUnavailable(Exception):
    """Server-side copy cannot work here (access denied, other partition, unsupported): stream instead."""


class AlreadyThere(Exception):
    """The object at the destination key is this file already: nothing is sent."""


def human_bytes(count: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(count) < 1024 or unit == 'TiB':
            return f'{count:.0f} {unit}' if unit == 'B' else f'{count:.1f} {unit}'
        count /= 1024
    return f'{count:.1f} TiB'


def _private_open(path: str, append: bool = False) -> Any:
    """Open a text file for writing that only its owner can read."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    return open(os.open(path, flags, 0o600), 'a' if append else 'w', encoding='utf-8', errors='backslashreplace')


###############################################################################
# Config ######################################################################
###############################################################################

JOB_TYPES = ('LOCAL_TO_S3', 'S3_TO_S3', 'ALIOSS_TO_S3')
STORAGE_CLASSES = ('STANDARD', 'REDUCED_REDUNDANCY', 'STANDARD_IA', 'ONEZONE_IA',
                   'INTELLIGENT_TIERING', 'GLACIER', 'DEEP_ARCHIVE', 'GLACIER_IR',
                   'OUTPOSTS', 'SNOW', 'EXPRESS_ONEZONE', 'NEARLINE', 'COLDLINE', 'ARCHIVE')
# Google Cloud Storage takes x-amz-storage-class with its own class names (cloud.google.com/storage/docs/
# aws-simple-migration): S3's names are written as the GCS class of the same access pattern.
GCS_CLASS_FOR = {'REDUCED_REDUNDANCY': 'STANDARD', 'INTELLIGENT_TIERING': 'STANDARD', 'STANDARD_IA': 'NEARLINE',
                 'ONEZONE_IA': 'NEARLINE', 'GLACIER_IR': 'COLDLINE', 'GLACIER': 'ARCHIVE', 'DEEP_ARCHIVE': 'ARCHIVE'}
GCS_ONLY_CLASSES = ('NEARLINE', 'COLDLINE', 'ARCHIVE')
LOG_LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR')
CANNED_ACLS = ('private', 'public-read', 'public-read-write', 'authenticated-read', 'aws-exec-read',
               'bucket-owner-read', 'bucket-owner-full-control')
# Files up to this size (and half of MemoryLimit) go in one PutObject unless ChunkSize is larger: a multipart
# upload costs more of the CPU of a store that joins the parts by copying them (rclone serve s3), and a crash
# loses what is in flight either way (at most the memory window). Measured: bench/README.md.
SINGLE_PUT_MIB = 64


def _text(value: str) -> str:
    return value.strip()


def _word(value: str) -> str:
    """A value that is one word (a bucket, region, key id, URL): a space in it is a mistake."""
    value = value.strip()
    if any(character.isspace() for character in value):
        raise ValueError('must be one word, without spaces')
    return value


def _prefix(value: str) -> str:
    """A folder-like prefix: no leading or trailing '/', '' for the bucket root."""
    value = value.strip().strip('/')
    return '' if value in ('', '.') else value


def _endpoint(value: str) -> Optional[str]:
    """'AWS' or empty means the AWS default endpoint (None); a bare host gets https://."""
    value = value.strip()
    if value.upper() in ('', 'AWS'):
        return None
    if '://' not in value:
        value = 'https://' + value
    if not value.startswith(('http://', 'https://')):
        raise ValueError('must be AWS, empty, or an http(s):// URL')
    return value.rstrip('/')


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ('true', 'yes', 'on', '1'):
        return True
    if lowered in ('false', 'no', 'off', '0'):
        return False
    raise ValueError('must be True or False')


def _int_range(low: int, high: int, unit: str = '') -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise ValueError(f'must be a whole number{unit} from {low} to {high}')
        return number
    return parse


def _float_range(low: float, high: float, unit: str = '') -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value.strip())
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise ValueError(f'must be a number{unit} from {low:g} to {high:g}')
        return number
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        for choice in choices:
            if value.strip().upper() == choice.upper():
                return choice
        raise ValueError('must be one of ' + ', '.join(choices))
    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Empty means 'not set' (None); anything else goes through parse."""
    return lambda value: None if not value.strip() else parse(value)


@dataclasses.dataclass(frozen=True)
class Option:
    """One ini key: where it lives, its default (as written in the ini) and how to read it."""
    section: str
    name: str
    default: Optional[str]
    parse: Callable[[str], Any]
    help: str


OPTIONS: Tuple[Option, ...] = (
    Option('Basic', 'JobType', 'LOCAL_TO_S3', _choice(*JOB_TYPES), 'LOCAL_TO_S3 | S3_TO_S3 | ALIOSS_TO_S3'),
    Option('Basic', 'DesProfileName', 'default', _text,
           'profile of the destination in ~/.aws/credentials or ~/.aws/config (empty = the default '
           'credential chain: environment, instance role, ...)'),
    Option('Basic', 'DesEndPointURL', 'AWS', _endpoint,
           'AWS (or empty) for Amazon S3; else the URL of an S3-compatible store, e.g. '
           'http://127.0.0.1:9000 (MinIO), https://storage.googleapis.com (GCS, HMAC keys)'),
    Option('Basic', 'DesRegion', '', _word, 'destination region (empty = the profile\'s region)'),
    Option('Basic', 'DesBucket', None, _word, 'destination bucket'),
    Option('Basic', 'S3Prefix', '', _prefix, 'destination folder in the bucket (empty = bucket root)'),
    Option('Basic', 'SrcFileIndex', '*', _text,
           '* = everything below the source, recursively; else one file/key relative to it'),
    Option('LOCAL_TO_S3', 'SrcDir', None, _text, 'local source folder'),
    Option('S3_TO_S3', 'SrcProfileName', 'default', _text,
           'profile of the source (its own credentials: another account, partition or store)'),
    Option('S3_TO_S3', 'SrcEndPointURL', 'AWS', _endpoint,
           'AWS (or empty) for Amazon S3; else the URL of the S3-compatible source store'),
    Option('S3_TO_S3', 'SrcRegion', '', _word, 'source region (empty = the profile\'s region)'),
    Option('S3_TO_S3', 'SrcBucket', None, _word, 'source bucket'),
    Option('S3_TO_S3', 'SrcPrefix', None, _prefix,
           'source folder of S3_TO_S3 / ALIOSS_TO_S3; empty = the bucket root; without the key: S3Prefix,'
           ' as the original tool'),
    Option('ALIOSS_TO_S3', 'ali_SrcBucket', None, _word, 'Aliyun OSS source bucket'),
    Option('ALIOSS_TO_S3', 'ali_access_key_id', '', _word, 'OSS AccessKey ID (better: env OSS_ACCESS_KEY_ID)'),
    Option('ALIOSS_TO_S3', 'ali_access_key_secret', '', _word,
           'OSS AccessKey secret (better: env OSS_ACCESS_KEY_SECRET)'),
    Option('ALIOSS_TO_S3', 'ali_endpoint', 'oss-cn-beijing.aliyuncs.com', _word,
           'OSS endpoint host, or a full http(s):// URL'),
    Option('Advanced', 'ChunkSize', '8', _int_range(5, 5120, ' of MiB'),
           'part size in MiB (5 to 5120); grown per file so no file needs more than 10,000 parts'),
    Option('Advanced', 'MaxRetry', '20', _int_range(0, 1000),
           'retries of one request after transient errors (exponential backoff with jitter)'),
    Option('Advanced', 'MaxThread', '8', _int_range(1, 256), 'parts in flight per file'),
    Option('Advanced', 'MaxParallelFile', '512', _int_range(1, 1024),
           'files in flight, at most (Concurrency = auto starts with what the round trip to the store '
           'needs)'),
    Option('Advanced', 'MemoryLimit', '512', _int_range(16, 1048576, ' of MiB'),
           'file data held in memory at once (parts and small files in flight), in MiB; memory in use is '
           'about 100 MiB more'),
    Option('Advanced', 'Concurrency', 'auto', _choice('auto', 'fixed'),
           'auto: the data in flight starts at 2.5 GiB/s x the round trip (64 to 256 MiB), the files in '
           'flight at 2,560/s x the round trip (at least 32), files of up to 2 MiB at most 160 MiB/s x the '
           'round trip on a long link (each is a TCP flow in slow start), and all double while that raises '
           'throughput, up to MemoryLimit and MaxParallelFile (halved on errors); fixed: both limits from '
           'the start'),
    Option('Advanced', 'StorageClass', 'STANDARD', _choice(*STORAGE_CLASSES),
           "storage class of the new objects (S3's names; on Google Cloud Storage also NEARLINE, COLDLINE, ARCHIVE, and "
           "S3's are written as GCS's: STANDARD_IA as NEARLINE, GLACIER_IR as COLDLINE, GLACIER and DEEP_ARCHIVE as "
           'ARCHIVE)'),
    Option('Advanced', 'ifVerifyMD5', 'False', _bool,
           're-read resumed parts from the source so the whole object is verified'),
    Option('Advanced', 'DontAskMeToClean', 'True', _bool,
           "False: on a terminal, offer to abort this job's unfinished uploads first"),
    Option('Advanced', 'LoggingLevel', 'INFO', _choice(*LOG_LEVELS), 'DEBUG | INFO | WARNING | ERROR'),
    Option('Advanced', 'ResumableThreshold', None, _optional(_int_range(0, 5120, ' of MiB')),
           'files up to this size (MiB) go in one PutObject (default: 64 or half of MemoryLimit, or '
           'ChunkSize if larger), larger ones as resumable multipart uploads'),
    Option('Advanced', 'LogDir', 'log', _text,
           'folder for log files and the resume journal (relative to the current directory)'),
    Option('Advanced', 'BandwidthLimit', '0', _float_range(0, 1e6, ' of MiB/s'),
           'upper bound on upload rate in MiB/s (0 = none)'),
    Option('Advanced', 'RetryMode', 'standard', _choice('standard', 'adaptive'), 'botocore retry mode'),
    Option('Advanced', 'RequestTimeout', '60', _int_range(1, 3600, ' of seconds'),
           'seconds without a byte from the server before a request is retried'),
    Option('Advanced', 'ListPageSize', '1000', _int_range(1, 1000),
           'keys, uploads or parts asked for per list request'),
    Option('Advanced', 'ServerSideCopy', 'auto', _choice('auto', 'never'),
           'auto: S3_TO_S3 on one endpoint copies inside S3 (CopyObject / UploadPartCopy), falling back '
           'to streaming'),
    Option('Advanced', 'CompareMode', 'size', _choice('size', 'identity', 'checksum'),
           'when an object at the destination counts as done: same size | same source identity stamp | '
           'same content checksum'),
    Option('Advanced', 'ChecksumAlgorithm', 'auto', _choice('auto', 'none', 'CRC32C', 'CRC64NVME', 'SHA256'),
           'S3 additional checksum sent with every part and verified for the whole object; auto = '
           'CRC64NVME where the destination is found to verify it (then no MD5 is computed here), else '
           'none (Content-MD5)'),
    Option('Advanced', 'IgnoreListFile', '', _text,
           'file of fnmatch patterns (one per line, # comments) on bucket/key (S3, OSS) or the full path '
           '(local) to leave out'),
    Option('Advanced', 'AddressingStyle', 'auto', _choice('auto', 'path', 'virtual'),
           'S3 URL style; auto = path-style for IP/localhost and custom endpoints, virtual-hosted for AWS'
           ' and OSS'),
    Option('Advanced', 'SignatureVersion', 's3v4', _choice('s3v4', 's3'),
           'request signing: s3v4, or s3 (SigV2) for old S3-compatible stores'),
    Option('Advanced', 'SSE', 'none', _choice('none', 'AES256', 'aws:kms'),
           'server-side encryption of the new objects'),
    Option('Advanced', 'SSEKMSKeyId', '', _word,
           'KMS key id or ARN for SSE = aws:kms (empty = the bucket/account default key)'),
    Option('Advanced', 'ACL', '', _optional(_choice(*CANNED_ACLS)), 'canned ACL of the new objects (empty = none)'),
    Option('Advanced', 'RequestPayer', 'none', _choice('none', 'requester'),
           'requester: accept the charges of requester-pays buckets'),
    Option('Advanced', 'CopyMetadata', 'True', _bool,
           'copy Content-Type, Content-Encoding, Cache-Control, ... and user metadata from S3/OSS sources'),
    Option('Advanced', 'CopyTags', 'False', _bool, 'copy object tags from S3 sources'),
    Option('Advanced', 'UseCRT', 'auto', _choice('auto', 'never'),
           "auto: small PutObjects and GetObjects go through AWS's C runtime (awscrt) when it is "
           'installed, with less CPU per file than botocore; never: botocore only'),
    Option('Advanced', 'VerifyTLS', 'True', _bool,
           'verify TLS certificates (False only for test endpoints; prints a warning)'),
    Option('Cluster', 'SqsQueueUrl', '', _word, 'jobsender/worker/Lambda: URL (or name) of the SQS job queue'),
    Option('Cluster', 'StatusTable', '', _word, 'DynamoDB table of per-object status (empty = none)'),
    Option('Cluster', 'ClusterProfileName', '', _text, 'AWS profile for SQS, DynamoDB and SSM (empty = default chain)'),
    Option('Cluster', 'ClusterRegion', '', _word, 'region of the queue, table and parameter (empty = the profile\'s)'),
    Option('Cluster', 'SqsEndpointURL', '', _endpoint, 'SQS endpoint (empty = AWS; set for local stacks)'),
    Option('Cluster', 'DynamoDBEndpointURL', '', _endpoint, 'DynamoDB endpoint (empty = AWS)'),
    Option('Cluster', 'SsmEndpointURL', '', _endpoint, 'SSM endpoint (empty = AWS)'),
    Option('Cluster', 'CredentialsParameter', '', _word,
           "SSM SecureString with the other side's keys as JSON {aws_access_key_id, "
           'aws_secret_access_key, region}, or both sides\' as {"source": {...}, "destination": {...}}; '
           '/aws/reference/secretsmanager/NAME reads Secrets Manager; projects/P/secrets/S a GCP Secret Manager '
           'secret (on GCE)'),
    Option('Cluster', 'SecretManagerEndpointURL', '', _endpoint,
           'GCP Secret Manager endpoint for a CredentialsParameter of projects/P/secrets/S (empty = Google\'s)'),
    Option('Cluster', 'CredentialsFor', 'Des', _choice('Src', 'Des'),
           'the side CredentialsParameter is for: Src | Des'),
    Option('Cluster', 'JobTimeout', '43200', _int_range(1, 10 ** 7, ' of seconds'),
           'longest a worker holds one job; then it stops it (resumable) for another attempt'),
    Option('Cluster', 'VisibilityTimeout', '300', _int_range(5, 43200, ' of seconds'),
           'how long a received job stays hidden; extended every third of it while the job runs'),
    Option('Cluster', 'PollSeconds', '20', _int_range(1, 20, ' of seconds'), 'SQS long-poll wait'),
    Option('Cluster', 'StopBeforeTimeout', '60', _int_range(1, 900, ' of seconds'),
           'Lambda: no new part starts when less time than this is left'),
    Option('Cluster', 'BucketPairs', '', _text,
           'jobsender: JSON list of [{"src_bucket", "src_prefix", "des_bucket", "des_prefix"}, ...] to '
           'compare (empty or [] = SrcBucket/SrcPrefix to DesBucket/S3Prefix)'),
    Option('Cluster', 'BucketPairsParameter', '', _word,
           'SSM parameter holding BucketPairs, read at each jobsender run (the original ssm_parameter_bucket)'),
    Option('Cluster', 'IgnoreListParameter', '', _word,
           'SSM parameter of ignore-list patterns (one per line, as IgnoreListFile), used with the file\'s; '
           'workers read it again when it changes'),
    Option('Cluster', 'JobsenderCompareVersionId', 'False', _bool,
           'jobsender lists source versions, queues each with its versionId, and queues an object again '
           'when the version recorded for its copy differs'),
    Option('Cluster', 'UpdateVersionId', 'False', _bool,
           'a worker resolves the current versionId of a job that has none before copying, and records it'),
    Option('Cluster', 'GetObjectWithVersionId', 'False', _bool,
           'every read of a source object asks for the job\'s versionId (needs s3:GetObjectVersion), so '
           'an overwritten object still arrives as the queued version'),
    Option('Cluster', 'MetricsNamespace', 's3_upload', _word,
           'CloudWatch namespace of the per-minute metrics of workers (PutMetricData) and the Lambda (EMF '
           'lines); empty = none'),
    Option('Cluster', 'FleetName', 's3_upload', _word, 'the Fleet dimension of those metrics (one per deployment)'),
    Option('Cluster', 'CloudWatchEndpointURL', '', _endpoint, 'CloudWatch endpoint (empty = AWS)'),
)
OPTIONS_BY_KEY: Dict[str, Option] = {option.name.lower(): option for option in OPTIONS}
ENV_PREFIX = 'S3UPLOAD_'
SECTIONS = tuple(dict.fromkeys(option.section for option in OPTIONS))


def _closest(word: str, candidates: Iterable[str]) -> str:
    """The candidate word was most likely meant to be (case-insensitive), or ''."""
    candidates = list(candidates)
    import difflib      # only for a misspelt key
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in candidates], n=1, cutoff=0.6)
    return next(c for c in candidates if c.lower() == close[0]) if close else ''


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    meant = _closest(word, candidates)
    return f' (did you mean {meant}?)' if meant else ''


@dataclasses.dataclass(frozen=True)
class Dialect:
    """Another tool's config read as ours: its extra sections (their keys count as ours), and its keys and values
    (key lower-cased) translated into our settings: None = not one of its own, ConfigError = refused."""
    sections: Tuple[str, ...] = ()
    translate: Callable[[str, str], Optional[Dict[str, str]]] = lambda key, value: None
    optional: Tuple[str, ...] = ()        # keys its reader does without (it checks them where it needs them)


class Config:
    """Every setting of a job, parsed and checked; attributes are named as the ini keys."""

    JobType: str
    DesProfileName: str
    DesEndPointURL: Optional[str]
    DesRegion: str
    DesBucket: str
    S3Prefix: str
    SrcFileIndex: str
    SrcDir: str
    SrcProfileName: str
    SrcEndPointURL: Optional[str]
    SrcRegion: str
    SrcBucket: str
    SrcPrefix: str
    ChunkSize: int
    MaxRetry: int
    MaxThread: int
    MaxParallelFile: int
    MemoryLimit: int
    StorageClass: str
    ifVerifyMD5: bool
    DontAskMeToClean: bool
    LoggingLevel: str
    ResumableThreshold: int
    LogDir: str
    BandwidthLimit: float
    RetryMode: str
    RequestTimeout: int
    ListPageSize: int
    ali_SrcBucket: str
    ali_access_key_id: str
    ali_access_key_secret: str
    ali_endpoint: str
    ServerSideCopy: str
    CompareMode: str
    ChecksumAlgorithm: str
    IgnoreListFile: str
    AddressingStyle: str
    SignatureVersion: str
    SSE: str
    SSEKMSKeyId: str
    ACL: Optional[str]
    RequestPayer: str
    CopyMetadata: bool
    CopyTags: bool
    UseCRT: str
    VerifyTLS: bool
    SqsQueueUrl: str
    StatusTable: str
    ClusterProfileName: str
    ClusterRegion: str
    SqsEndpointURL: Optional[str]
    DynamoDBEndpointURL: Optional[str]
    SsmEndpointURL: Optional[str]
    CredentialsParameter: str
    CredentialsFor: str
    SecretManagerEndpointURL: Optional[str]
    JobTimeout: int
    VisibilityTimeout: int
    PollSeconds: int
    StopBeforeTimeout: int
    BucketPairs: str
    BucketPairsParameter: str
    IgnoreListParameter: str
    JobsenderCompareVersionId: bool
    UpdateVersionId: bool
    GetObjectWithVersionId: bool
    MetricsNamespace: str
    FleetName: str
    CloudWatchEndpointURL: Optional[str]

    def __init__(self, raw: Dict[str, str], path: str = '', warnings: Iterable[str] = (),
                 strays: Optional[Dict[str, str]] = None, optional: Tuple[str, ...] = ()) -> None:
        self.path = path
        self.warnings = list(warnings)
        self.raw = dict(raw)
        self.strays = strays or {}      # key name (lower case) -> the misspelt key or section that may have meant it
        self.optional = optional
        for option in OPTIONS:
            text = raw.get(option.name.lower(), option.default)
            value = None
            if text is not None:
                try:
                    value = option.parse(text)
                except ValueError as error:
                    raise ConfigError(f'[{option.section}] {option.name} = {text.strip()!r} {error}: '
                                      f'fix it in {path or "the settings"}') from None
            setattr(self, option.name, value)
        if self.SrcPrefix is None:
            self.SrcPrefix = self.S3Prefix
        if self.ResumableThreshold is None:
            self.ResumableThreshold = max(self.ChunkSize, min(SINGLE_PUT_MIB, self.MemoryLimit // 2))
        self._check_required()

    def _check_required(self) -> None:
        needed = ['DesBucket']
        if self.JobType == 'LOCAL_TO_S3':
            needed.append('SrcDir')
        elif self.JobType == 'S3_TO_S3':
            needed.append('SrcBucket')
        else:
            needed.append('ali_SrcBucket')
        for name in needed:
            if not getattr(self, name) and name not in self.optional:
                option = OPTIONS_BY_KEY[name.lower()]
                stray = self.strays.get(name.lower())
                if stray:
                    raise ConfigError(f'{stray}: so [{option.section}] {name} is missing; fix it in '
                                      f'{self.path or "the settings"}')
                raise ConfigError(f'[{option.section}] {name} is missing or empty: set the {option.help} '
                                  f'in {self.path or "the settings"}')
        for name in ('DesBucket', 'SrcBucket'):
            if getattr(self, name) and '/' in getattr(self, name):
                raise ConfigError(f'{name} = {getattr(self, name)!r} must be a bucket name, without "/": '
                                  'put folders in S3Prefix / SrcPrefix')

    @classmethod
    def load(cls, path: str, overrides: Optional[Dict[str, str]] = None,
             environ: Optional[Dict[str, str]] = None, dialect: Optional[Dialect] = None) -> 'Config':
        """Read an ini file (keys case-insensitive, sections optional; also in dialect's spelling), then
        S3UPLOAD_<Key> variables of environ, then KEY=VALUE overrides."""
        raw, warnings, strays = _read_ini(path, dialect or Dialect())
        for name, value in (environ or {}).items():
            if name.upper().startswith(ENV_PREFIX):
                key = name[len(ENV_PREFIX):]
                if key.lower() in OPTIONS_BY_KEY:
                    raw[key.lower()] = value
                else:
                    warnings.append(f'environment variable {name} ignored: unknown key'
                                    + _did_you_mean(key, [o.name for o in OPTIONS]))
        for key, value in (overrides or {}).items():
            if key.lower() not in OPTIONS_BY_KEY:
                raise ConfigError(f'--set {key}: unknown key' + _did_you_mean(key, [o.name for o in OPTIONS])
                                  + '; see --help for the keys')
            raw[key.lower()] = value
        return cls(raw, path, warnings, strays, dialect.optional if dialect else ())

    def replace(self, **settings: Any) -> 'Config':
        """This config with some keys set otherwise."""
        return Config({**self.raw, **{key.lower(): str(value) for key, value in settings.items()}}, self.path,
                      optional=self.optional)

    @classmethod
    def from_settings(cls, settings: Dict[str, Any]) -> 'Config':
        """Build a config from a mapping of ini key -> value (GUI, demo and library use)."""
        overrides = {key: str(value) for key, value in settings.items()}
        for key in overrides:
            if key.lower() not in OPTIONS_BY_KEY:
                raise ConfigError(f'unknown key {key}' + _did_you_mean(key, [o.name for o in OPTIONS]))
        return cls({key.lower(): value for key, value in overrides.items()}, 'the settings')

    @property
    def chunk_bytes(self) -> int:
        return self.ChunkSize * MiB

    @property
    def threshold_bytes(self) -> int:
        return self.ResumableThreshold * MiB


def read_settings(path: str) -> Tuple[Dict[str, str], List[str]]:
    """The raw key -> value settings of an ini file (keys lower-cased), and warnings about unknown ones."""
    raw, warnings, _ = _read_ini(path, Dialect())
    return raw, warnings


# Free text (paths, names, prefixes) may hold " #" or " ;": taken whole, never cut at a would-be comment.
FREE_TEXT = (_text, _prefix)
INLINE_COMMENT = re.compile(r'\s[#;]')


def _value(option: Option, path: str, section: str, key: str, value: str, warnings: List[str]) -> str:
    """A key's value as written: a comment after " #" or " ;" is cut only where the value cannot hold one (a
    number, a choice, a URL); free text is taken whole, and said so when it looks like it had a comment."""
    comment = INLINE_COMMENT.search(value)
    if not comment:
        return value
    if option.parse not in FREE_TEXT:
        return value[:comment.start()]
    warnings.append(f'{path}: [{section}] {key} = {value!r} is taken whole, "{value[comment.start():].strip()}" included: '
                    'comments go on lines of their own')
    return value


def _read_ini(path: str, dialect: Dialect) -> Tuple[Dict[str, str], List[str], Dict[str, str]]:
    """raw settings (keys lower-cased), warnings, and what a missing key may have been misspelt as."""
    try:
        with open(path, 'rb') as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(f'config file not found: {path}: pass --config PATH or copy '
                          's3_upload_config.ini beside the script') from None
    except OSError as error:
        raise ConfigError(f'cannot read config file {path}: {error.strerror}: check its permissions') from None
    try:
        text = data.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        raise ConfigError(f'config file {path} is not UTF-8 text (byte {error.start}): '
                          'save it as UTF-8') from None
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=None, strict=True)
    parser.optionxform = str        # type: ignore[assignment,method-assign]  # the user's spelling, for messages
    try:
        parser.read_string(text, source=path)
    except configparser.Error as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(f'config file {path} cannot be parsed: {first_line}: fix that line') from None
    raw: Dict[str, str] = {}
    warnings: List[str] = []
    strays: Dict[str, str] = {}
    known_sections = {s.lower() for s in SECTIONS + dialect.sections}
    names = [o.name for o in OPTIONS]
    for section in parser.sections():
        if section.lower() not in known_sections:
            guess = _did_you_mean(f'[{section}]', [f'[{known}]' for known in SECTIONS])
            keys = list(parser[section])
            warnings.append(f'{path}: unknown section [{section}] ignored{guess}' +
                            (f', and with it {", ".join(keys)}' if keys else ''))
            for key in keys:
                if key.lower() in OPTIONS_BY_KEY:
                    strays[key.lower()] = f'{key} is in section [{section}], which is not one of ours{guess}'
            continue
        for key, value in parser.items(section):
            translated = dialect.translate(key.lower(), value.strip())
            if translated is not None:
                raw.update(translated)
                continue
            option = OPTIONS_BY_KEY.get(key.lower())
            if option:
                raw[key.lower()] = _value(option, path, section, key, value, warnings)
                continue
            meant = _closest(key, names)
            guess = f' (did you mean {meant}?)' if meant else ''
            warnings.append(f'{path}: unknown key {key} in [{section}] ignored{guess}')
            if meant:
                strays.setdefault(meant.lower(), f'unknown key {key} in [{section}]{guess}')
    return raw, warnings, strays


def write_settings(path: str, settings: Dict[str, Any]) -> None:
    """Write settings as an ini file the CLI runs unchanged: each known key in its section (owner-only)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str           # keep the keys' spelling
    for option in OPTIONS:
        value = next((v for k, v in settings.items() if k.lower() == option.name.lower()), None)
        if value is None or (value == '' and option.default is None):
            continue
        if not parser.has_section(option.section):
            parser.add_section(option.section)
        parser.set(option.section, option.name, str(value))
    temporary = path + '.tmp'
    with _private_open(temporary) as handle:
        handle.write('# written by s3_upload; run it with: python3 s3_upload.py --nogui --config THIS_FILE\n')
        parser.write(handle)
    os.replace(temporary, path)


###############################################################################
# Logging #####################################################################
###############################################################################

CONTROL_CHARACTERS = {code: f'\\x{code:02x}' for code in range(32) if code != 9} | {10: '\\n', 13: '\\r'}


class SecretFilter(logging.Filter):
    """Replaces every known secret (access keys, secret keys, tokens) in log records by '***'.

    It also escapes control characters, so a key with a newline cannot forge log lines.
    """

    MIN_LENGTH = 8   # shorter values are no real keys, and masking them would mangle ordinary words
    secrets: set = set()
    lock = threading.Lock()

    @classmethod
    def remember(cls, credentials: Any) -> None:
        try:
            frozen = credentials.get_frozen_credentials()
        except Exception:  # noqa: BLE001 - refreshable credentials may fail here; nothing to remember
            return
        cls.add(frozen.access_key, frozen.secret_key, frozen.token)

    @classmethod
    def add(cls, *values: Optional[str]) -> None:
        with cls.lock:
            cls.secrets.update(v for v in values if v and len(v) >= cls.MIN_LENGTH)

    @classmethod
    def redact(cls, text: str) -> str:
        for secret in sorted(cls.secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, '***')
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage().translate(CONTROL_CHARACTERS)
        record.msg, record.args = self.redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class ConsoleHandler(logging.StreamHandler):
    """Console log lines that share the terminal with the live progress bar."""

    lock = threading.Lock()
    status = ''

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, 'console', True) is False:      # for the log file only (the summary, printed plain)
            return
        with self.lock:
            if self.status:
                self.stream.write('\r\x1b[K')
            super().emit(record)
            if self.status:
                self.stream.write(self.status)
                self.stream.flush()

    @classmethod
    def show_status(cls, stream: Any, line: str) -> None:
        with cls.lock:
            cls.status = line
            stream.write('\r\x1b[K' + line)
            stream.flush()

    @classmethod
    def clear_line(cls, stream: Any) -> None:
        with cls.lock:
            if cls.status:
                stream.write('\r\x1b[K')
                stream.flush()
            cls.status = ''


class LogFile(logging.StreamHandler):
    """LogDir/s3_upload-<time>.log (owner-only). Deferred: records wait in memory until open(), so a job refused
    before any transfer leaves no file and no folder. A write that fails (LogDir full) is said once on the
    console; the run goes on without the file."""

    def __init__(self, folder: str, deferred: bool = False) -> None:
        super().__init__(io.StringIO())
        self.folder = folder
        self.path = os.path.join(folder, time.strftime('s3_upload-%Y%m%d-%H%M%S') + f'-{os.getpid()}.log')
        self.waiting: Optional[List[logging.LogRecord]] = []
        self.broken = False
        if not deferred:
            self.open()

    def open(self) -> None:
        """Create the folder and the file, and write what was logged so far; ConfigError if they cannot be."""
        if self.waiting is None:
            return
        try:
            os.makedirs(self.folder, exist_ok=True)
            self.setStream(_private_open(self.path))
        except OSError as error:
            raise ConfigError(f'cannot create the log file in LogDir {self.folder}: {error.strerror}: '
                              'fix LogDir') from None
        waiting, self.waiting = self.waiting, None
        for record in waiting:
            self.handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.waiting is not None:
            self.waiting.append(record)
        elif not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.broken:
            return
        self.broken = True
        error = sys.exc_info()[1]
        full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
        print(f's3_upload: cannot write the log file {self.path} ({getattr(error, "strerror", None) or error}): '
              'the run goes on, logging to the console only; ' +
              ('LogDir is full: free space there or set LogDir to another disk' if full else 'check LogDir'),
              file=sys.stderr)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().close()


def setup_logging(config: Config, console: bool = True, deferred: bool = False) -> LogFile:
    """Log to LogDir/s3_upload-<time>.log (owner-only; deferred: from LogFile.open() on) and to the console
    at LoggingLevel."""
    level = getattr(logging, config.LoggingLevel)
    secret_filter = SecretFilter()
    file_handler = LogFile(config.LogDir, deferred)
    file_handler.setLevel(min(level, logging.INFO))
    file_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(threadName)s %(message)s'))
    file_handler.addFilter(secret_filter)
    handlers: List[logging.Handler] = [file_handler]
    if console:
        console_handler = ConsoleHandler(sys.stderr)
        console_handler.setLevel(level)
        console_handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s', '%H:%M:%S'))
        console_handler.addFilter(secret_filter)
        handlers.append(console_handler)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    # botocore's own DEBUG output is only wanted at DEBUG (it is filtered for secrets like ours).
    for name in ('botocore', 'boto3', 'urllib3', 's3transfer'):
        logging.getLogger(name).setLevel(logging.DEBUG if level == logging.DEBUG else logging.WARNING)
    return file_handler


###############################################################################
# S3 clients and errors #######################################################
###############################################################################

FATAL_ERROR_CODES = frozenset((
    'AccessDenied', 'AllAccessDisabled', 'AccountProblem', 'ExpiredToken', 'InvalidAccessKeyId',
    'InvalidBucketName', 'InvalidToken', 'NoSuchBucket', 'NoSuchKey', 'NoSuchUpload', 'NotFound',
    'SignatureDoesNotMatch', 'InvalidArgument', 'InvalidRequest', 'InvalidPart', 'InvalidPartOrder',
    'EntityTooLarge', 'EntityTooSmall', 'KeyTooLongError', 'InvalidStorageClass', 'MethodNotAllowed',
    'NotImplemented', 'PreconditionFailed', 'InvalidObjectState', 'InvalidRange', 'MalformedXML',
    'UnauthorizedAccess', 'PermanentRedirect', 'AuthorizationHeaderMalformed', 'InvalidSecurity',
    'InvalidDigest', 'MetadataTooLarge', 'KMS.NotFoundException', 'KMS.DisabledException',
    '400', '401', '403', '404', '405', '411', '412', '416', '501',
))
RETRYABLE_ERROR_CODES = frozenset((
    'RequestTimeout', 'RequestTimeoutException', 'SlowDown', 'Throttling', 'ThrottlingException',
    'TooManyRequests', 'RequestLimitExceeded', 'InternalError', 'ServiceUnavailable', 'BadDigest',
    'RequestTimeTooSkewed', 'OperationAborted', 'IncompleteBody', 'XAmzContentSHA256Mismatch',
    '500', '502', '503', '504', '429',
))
# A write refused with these is refused for every file: the answer a write check gives (one line, exit 2).
WRITE_REFUSALS = frozenset(('AccessDenied', '403', 'InvalidStorageClass'))
CREDENTIAL_ERROR_CODES = frozenset(('InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken',
                                    'InvalidToken', 'UnrecognizedClientException', 'AuthFailure',
                                    'InvalidAccessKeyId.NotFound', 'TokenRefreshRequired'))
# Server headers of stores that create a missing bucket when an object is written to it.
BUCKETS_MADE_BY_WRITES = ('seaweedfs',)
# A PutObject on condition that no object is at its key (If-None-Match: *) was refused because one is.
CONDITION_FAILED = frozenset(('PreconditionFailed', '412', 'ConditionalRequestConflict', '409'))
# Met mid-run, these would fail every file the same way: the run stops (resumable) and says so once.
RUN_ENDING_ERROR_CODES = CREDENTIAL_ERROR_CODES | {'NoSuchBucket', 'AllAccessDisabled', 'AccountProblem'}


def error_code(error: BaseException) -> str:
    """The error code of an S3 (botocore) or OSS (oss2) error: 'NoSuchKey', '404', ...; else ''."""
    response = getattr(error, 'response', None)
    if isinstance(response, dict):
        return str(response.get('Error', {}).get('Code') or
                   response.get('ResponseMetadata', {}).get('HTTPStatusCode') or '')
    code, status = getattr(error, 'code', None), getattr(error, 'status', None)
    if isinstance(status, int) and status > 0:   # oss2 errors
        return str(code or status)
    return ''


def error_status(error: BaseException) -> int:
    response = getattr(error, 'response', None)
    if isinstance(response, dict):
        return int(response.get('ResponseMetadata', {}).get('HTTPStatusCode') or 0)
    status = getattr(error, 'status', 0)
    return status if isinstance(status, int) and status > 0 else 0


def describe_error(error: BaseException) -> str:
    """One line naming an error, without secrets or tracebacks."""
    code = error_code(error)
    if code:
        response = getattr(error, 'response', None)
        message = (response.get('Error', {}).get('Message') if isinstance(response, dict)
                   else getattr(error, 'message', '')) or ''
        return f'{code}: {message}'.rstrip(': ') if message and message != code else code
    text = str(error).strip().splitlines()[0] if str(error).strip() else ''
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def is_retryable(error: BaseException) -> bool:
    """Transient (network, throttling, 5xx, bad digest) as opposed to permanent (403, 404, ...)."""
    if isinstance(error, (RestartFile, SourceGone, ConfigError, Stopped, VerifyError, ServerSideUnavailable)):
        return False
    code = error_code(error)
    if code:
        if code in RETRYABLE_ERROR_CODES:
            return True
        if code in FATAL_ERROR_CODES:
            return False
        status = error_status(error)
        return status >= 500 or status == 429 or not status
    return True  # connection resets, timeouts, truncated bodies


def _path_style_host(endpoint: str) -> bool:
    """Custom endpoints use path-style URLs, except stores that only take virtual-hosted ones (OSS)."""
    from urllib.parse import urlsplit
    host = (urlsplit(endpoint).hostname or '').lower()
    return not host.endswith(('.aliyuncs.com', '.myqcloud.com'))


def parse_timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser, without dateutil for the two forms S3 answers with (ISO 8601 in
    listings, RFC 822 in headers): dateutil's general parser is slow, and small files need several per file."""
    import botocore.utils
    try:
        if isinstance(value, str) and value[4:5] == '-':
            moment = datetime.datetime.fromisoformat(value[:-1] + '+00:00' if value.endswith('Z') else value)
        else:
            from email.utils import parsedate_to_datetime     # (only S3 sources answer with headers to parse)
            moment = parsedate_to_datetime(value)
        if moment.tzinfo is not None:
            return moment
    except (TypeError, ValueError, IndexError):
        pass
    return botocore.utils.parse_timestamp(value)


def import_botocore(crt: bool = True) -> None:
    """Import botocore; crt=False: without awscrt, which botocore loads at import (its native library is
    slow to load) for what a job without the CRT lane never asks of it (SigV4a, CRC checks of downloads)."""
    if crt or 'botocore' in sys.modules or 'awscrt' in sys.modules:
        import botocore.session  # noqa: F401 - imported for the caller
        return
    sys.modules['awscrt'] = None    # type: ignore[assignment] - an import of it fails: botocore.compat.HAS_CRT
    try:
        import botocore.session  # noqa: F401,F811
    finally:
        del sys.modules['awscrt']   # our own checksums may import it later


class ModelCache:
    """botocore's parsed S3 model, endpoint rules and partitions, kept between runs (marshal reads them far
    faster than JSON is parsed): a file per botocore and Python version in ~/.cache/s3_upload."""

    def __init__(self, session: Any) -> None:
        import botocore
        import botocore.loaders
        data_path = session.get_config_variable('data_path')     # AWS_DATA_PATH, as botocore's own loader
        extra = data_path.split(os.pathsep) if data_path else None
        self.loader = botocore.loaders.Loader(extra_search_paths=extra, file_loader=self.plain_json_loader())
        paths = self.loader.search_paths
        mtimes = [os.stat(path).st_mtime if os.path.isdir(path) else 0 for path in paths]
        digest = hashlib.md5(json.dumps([paths, mtimes]).encode(), usedforsecurity=False).hexdigest()[:12]
        folder = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 's3_upload')
        self.path = os.path.join(folder, f'botocore-{botocore.__version__}-{sys.implementation.cache_tag}-{digest}')
        try:
            with open(self.path, 'rb') as handle:
                data = handle.read()            # (marshal.load reads in bits)
            gc.disable()                        # tens of thousands of new containers: no collection meanwhile
            try:
                self.known: Dict[Any, Any] = marshal.loads(data)
            finally:
                gc.enable()
        except (OSError, ValueError, EOFError, TypeError):
            self.known = {}
        self.loader._cache.update(self.known)     # the loader's own memo (its cache argument is not used)

    @staticmethod
    def plain_json_loader() -> Any:
        """botocore's JSON file loader, parsing into dicts (ordered as well) instead of OrderedDicts, which
        marshal cannot write and which are slower to build."""
        import botocore.loaders

        class PlainJSONFileLoader(botocore.loaders.JSONFileLoader):
            def _load_file(self, full_path: str, open_method: Any) -> Any:
                if not os.path.isfile(full_path):
                    return None
                with open_method(full_path, 'rb') as handle:
                    return json.loads(handle.read().decode('utf-8'))
        return PlainJSONFileLoader()

    def save(self) -> None:
        """Keep what the loader read beyond what the file held (once: later runs read it all from the file;
        a run pays it at its end)."""
        if len(self.loader._cache) <= len(self.known):
            return
        try:
            data = marshal.dumps(dict(self.loader._cache))
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + f'.{os.getpid()}', 'wb') as handle:
                handle.write(data)
            os.replace(self.path + f'.{os.getpid()}', self.path)
        except (OSError, ValueError) as error:      # only a slower start next time
            logger.debug('cannot keep botocore\'s models in %s: %s', self.path, error)


def make_client(profile: str, endpoint: Optional[str], region: str, pool_size: int, role: str = 'destination',
                retry_mode: str = 'standard', addressing: str = 'auto', signature: str = 's3v4',
                verify_tls: bool = True, timeout: int = 60, credentials: Any = None, lane: bool = False,
                loader: Any = None) -> Any:
    """A thread-safe S3 client for one profile + endpoint, sized for the transfer's concurrency
    (credentials, when given, replace the profile's: keys from SSM in cluster mode); lane=True gives it
    a CrtLane (client.crt_lane) for small PutObjects and GetObjects when awscrt is installed. Clients
    made with another's client.data_loader share its parsed service model (a fifth of the start)."""
    import_botocore(crt=lane)   # botocore's own session: boto3 would add 0.1 s of imports to every start
    import botocore.config
    import botocore.exceptions
    import botocore.handlers
    import botocore.session
    profile_name = profile.strip() or None
    models: Optional[ModelCache] = None
    try:
        if profile_name == 'default' and 'default' not in botocore.session.Session().available_profiles:
            profile_name = None  # 'default' without a profile file: environment / instance role
        session = botocore.session.Session(profile=profile_name)
        session.get_scoped_config()     # a missing profile fails here, not at the first request
        session.get_component('response_parser_factory').set_parser_defaults(timestamp_parser=parse_timestamp)
        if loader is None:
            models = ModelCache(session)
        session.register_component('data_loader', loader or models.loader)  # type: ignore[union-attr]
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(f'AWS profile {profile!r} ({role}) not found in ~/.aws/credentials or '
                          f'~/.aws/config: create it with "aws configure --profile {profile}" or fix the '
                          'profile name') from None
    except botocore.exceptions.BotoCoreError as error:
        raise ConfigError(f'cannot load AWS profile {profile!r} ({role}): {describe_error(error)}') from None
    if credentials is not None:
        session._credentials = credentials      # botocore's documented-by-use hook for custom providers
    try:
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as error:
        raise ConfigError(f'cannot load credentials of profile {profile!r} ({role}): '
                          f'{describe_error(error)}') from None
    if credentials is None:
        raise ConfigError(f'no AWS credentials found for the {role} (profile {profile!r}): run "aws configure"'
                          ' or set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY')
    SecretFilter.remember(credentials)
    if addressing == 'auto':
        addressing = 'path' if endpoint and _path_style_host(endpoint) else ('virtual' if endpoint else 'auto')
    options: Dict[str, Any] = dict(
        max_pool_connections=pool_size,
        retries={'mode': retry_mode, 'max_attempts': 3},
        connect_timeout=min(10, timeout),
        read_timeout=timeout,
        tcp_keepalive=True,
        # A fixed User-Agent: botocore otherwise rebuilds and sanitises it on every request.
        user_agent=f's3_upload/{__version__} botocore/{botocore.__version__} Python/{sys.version.split()[0]}',
        parameter_validation=False,     # our requests are built by code, not typed by a user
        # Every upload carries Content-MD5 or an x-amz-checksum-* the store verifies, a signed header: the
        # body is bound to the signature by it, so a second pass over the data (SHA-256 of the payload)
        # buys nothing, even over http.
        s3={'addressing_style': addressing, 'payload_signing_enabled': False},
        signature_version=signature,
    )
    if endpoint:
        # S3-compatible stores may reject the flexible-checksum headers botocore >= 1.36 adds by default.
        options.update(request_checksum_calculation='when_required',
                       response_checksum_validation='when_required')
    region_name = region or session.get_config_variable('region') or 'us-east-1'
    if not verify_tls:
        logger.warning('TLS certificate verification is OFF for the %s endpoint (VerifyTLS = False)', role)
    try:
        client = session.create_client('s3', endpoint_url=endpoint, region_name=region_name, verify=verify_tls,
                                       config=botocore.config.Config(**options))
    except (botocore.exceptions.BotoCoreError, ValueError) as error:
        raise ConfigError(f'cannot create the {role} S3 client: {describe_error(error)}') from None
    # No "Expect: 100-continue": it costs a round trip per part on long links, and servers that
    # answer it late make the response unparseable (seen with SeaweedFS).
    client.meta.events.unregister('before-call.s3', botocore.handlers.add_expect_header)
    _cache_endpoint_rules(client, session)
    client.model_cache = models     # saved after the job (ModelCache.save): not on the way to the first request
    client.crt_lane = CrtLane.create(client, credentials, verify_tls, pool_size, timeout) if lane else None
    client.data_loader = session.get_component('data_loader')
    return client


def _cache_endpoint_rules(client: Any, session: Any) -> None:
    """Let botocore's endpoint cache work for S3: its rule set declares Key and Prefix as parameters but
    never reads them, so every new key missed the cache and re-ran the whole rule set (a sixth of the
    CPU of a small-file PUT). Parameters the loaded rules never reference are left out; same endpoint."""
    resolver = getattr(client, '_ruleset_resolver', None)
    original = getattr(resolver, '_get_provider_params', None)
    if original is None:
        return
    try:
        loader = session.get_component('data_loader')
        rules = loader.load_service_model('s3', 'endpoint-rule-set-1', client.meta.service_model.api_version)
    except Exception:  # noqa: BLE001 - an optimisation only
        return
    text = json.dumps(rules.get('rules', []))
    unused = [name for name in ('Key', 'Prefix') if f'"ref": "{name}"' not in text]

    def provider_params(*args: Any, **kwargs: Any) -> Dict[str, Any]:
        params = original(*args, **kwargs)
        for name in unused:
            params.pop(name, None)
        return params

    resolver._get_provider_params = provider_params


class Deadlines:
    """Cancels awscrt requests not answered by their deadline; one thread checks them once a second.
    Requests are known by their finished futures (a done callback that held the request itself would make
    a reference cycle, and keep every body until the garbage collector's oldest generation ran)."""

    def __init__(self) -> None:
        self.due: Dict[Future, Tuple[float, float, Callable[[], None]]] = {}    # -> (deadline, seconds, cancel)
        self.late: Dict[Future, float] = {}      # cancelled for lateness -> the seconds it was given
        self.lock = threading.Lock()
        self.watcher: Optional[threading.Thread] = None

    def watch(self, finished: Future, cancel: Callable[[], None], seconds: float) -> None:
        with self.lock:
            self.due[finished] = (time.monotonic() + seconds, seconds, cancel)
            if self.watcher is None:
                self.watcher = threading.Thread(target=self._sweep, name='deadlines', daemon=True)
                self.watcher.start()

    def forget(self, finished: Future) -> float:
        """Stop watching a request that ended; the seconds it had if it was cancelled for lateness, else 0."""
        with self.lock:
            self.due.pop(finished, None)
            return self.late.pop(finished, 0.0)

    def _sweep(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            cancels = []
            with self.lock:
                for finished in [finished for finished, (deadline, _, _) in self.due.items() if deadline < now]:
                    _, self.late[finished], cancel = self.due.pop(finished)
                    cancels.append(cancel)
            for cancel in cancels:
                cancel()


class CrtLane:
    """PutObject and GetObject of small bodies through AWS's C runtime (awscrt's S3 client) when it is
    installed: the request is signed, sent and answered in C, far less CPU per small file than botocore's.
    Everything else (and whatever the lane cannot carry) stays with botocore; errors come back as botocore's."""

    MAX_BODY = 2 * MiB      # above this, botocore's slice-wise send costs less CPU per byte than the lane's
    SLOWEST = 4 * 1024      # bytes/s a body may crawl at before a request no thread waits on is cut (PUTs: awscrt
                            # reports no progress of their bodies)
    AGENT = f's3_upload/{__version__} awscrt'

    def __init__(self, client: Any, credentials: Any, verify_tls: bool, pool_size: int, timeout: int) -> None:
        import awscrt.auth
        import awscrt.io
        import awscrt.s3
        import botocore.credentials
        from urllib.parse import urlsplit
        self.client = client
        self.timeout = timeout
        self.https = urlsplit(client.meta.endpoint_url).scheme == 'https'
        self.fields = {operation: {name: (shape.serialization.get('location', ''),
                                          shape.serialization.get('name', name), shape.type_name,
                                          shape.serialization.get('timestampFormat', 'rfc822'))
                                   for name, shape in client.meta.service_model.operation_model(operation)
                                   .input_shape.members.items()}
                       for operation in ('PutObject', 'GetObject')}
        self.put_answer = {shape.serialization.get('name', name).lower(): name for name, shape in
                           client.meta.service_model.operation_model('PutObject').output_shape.members.items()
                           if shape.serialization.get('location') == 'header'}
        self.bases: Dict[str, Tuple[str, str]] = {}
        self.deadlines = Deadlines()

        def frozen() -> Any:
            keys = credentials.get_frozen_credentials()
            return awscrt.auth.AwsCredentials(keys.access_key, keys.secret_key, keys.token)

        if isinstance(credentials, botocore.credentials.RefreshableCredentials):
            provider = awscrt.auth.AwsCredentialsProvider.new_delegate(frozen)    # asked at every signature
        else:                                                                      # no call into Python per request
            keys = credentials.get_frozen_credentials()
            provider = awscrt.auth.AwsCredentialsProvider.new_static(keys.access_key, keys.secret_key, keys.token)
        signing = awscrt.auth.AwsSigningConfig(
            algorithm=awscrt.auth.AwsSigningAlgorithm.V4, signature_type=awscrt.auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=provider,
            region=client.meta.region_name, service='s3',
            signed_body_value=awscrt.auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
            signed_body_header_type=awscrt.auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
            use_double_uri_encode=False, should_normalize_uri_path=False)     # S3 signs keys as they are
        tls = None
        if self.https and (not verify_tls or os.environ.get('AWS_CA_BUNDLE')):
            options = awscrt.io.TlsContextOptions()
            if not verify_tls:
                options.verify_peer = False
            else:
                options.override_default_trust_store_from_path(ca_filepath=os.environ['AWS_CA_BUNDLE'])
            tls = awscrt.io.ClientTlsContext(options).new_connection_options()
        # awscrt opens one connection per 0.4 Gbit/s of its throughput target (10 by default: 25 connections),
        # whatever the override: on a long link each small PUT holds its connection for a round trip.
        tuning = {'max_active_connections_override': pool_size, 'throughput_target_gbps': pool_size * 0.4,
                  'connect_timeout_ms': min(10, timeout) * 1000}
        import inspect
        accepted = inspect.signature(awscrt.s3.S3Client.__init__).parameters      # awscrt versions differ
        loops = awscrt.io.EventLoopGroup()
        self.s3 = awscrt.s3.S3Client(
            bootstrap=awscrt.io.ClientBootstrap(loops, awscrt.io.DefaultHostResolver(loops)),
            region=client.meta.region_name, signing_config=signing, tls_connection_options=tls,
            tls_mode=awscrt.s3.S3RequestTlsMode.ENABLED if self.https else awscrt.s3.S3RequestTlsMode.DISABLED,
            **{name: value for name, value in tuning.items() if name in accepted})

    @classmethod
    def create(cls, client: Any, credentials: Any, verify_tls: bool, pool_size: int,
               timeout: int) -> Optional['CrtLane']:
        """The lane, or None where it cannot stand in for botocore (no awscrt, a proxy, SigV2)."""
        proxied = any(os.environ.get(name) for name in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'))
        if proxied or client.meta.config.signature_version != 's3v4':
            return None
        try:
            return cls(client, credentials, verify_tls, pool_size, timeout)
        except Exception as error:  # noqa: BLE001 - missing or too old awscrt: botocore does it all
            logger.debug('no awscrt lane (%s); every request goes through botocore', describe_error(error))
            return None

    def _base(self, bucket: str) -> Tuple[str, str]:
        """(host, path prefix) of the bucket's objects, as botocore's endpoint rules resolve them."""
        from urllib.parse import urlsplit
        if bucket not in self.bases:
            url = urlsplit(self.client.generate_presigned_url('put_object', Params={'Bucket': bucket, 'Key': 'K'}))
            self.bases[bucket] = (url.netloc, url.path[:-1])
        return self.bases[bucket]

    def headers(self, params: Dict[str, Any], operation: str = 'PutObject') -> Optional[List[Tuple[str, str]]]:
        """An operation's parameters as HTTP headers, the way botocore serialises them; None if any is not
        plain ASCII, or not a header (versionId: botocore then sends the request)."""
        headers = []
        fields = self.fields[operation]
        for name, value in params.items():
            location, header, kind, stamp = fields[name]
            if location not in ('header', 'headers'):
                return None
            if location == 'headers':
                headers.extend((header + key, text) for key, text in value.items())
            elif kind == 'timestamp':
                import email.utils
                moment = value.astimezone(datetime.timezone.utc)
                headers.append((header, moment.strftime('%Y-%m-%dT%H:%M:%SZ') if stamp == 'iso8601'
                                else email.utils.format_datetime(moment, usegmt=True)))
            else:
                headers.append((header, ('true' if value else 'false') if kind == 'boolean' else str(value)))
        return headers if all(name.isascii() and text.isascii() for name, text in headers) else None

    def put(self, bucket: str, key: str, data: bytes, params: Dict[str, Any]) -> Optional[Dict[str, str]]:
        """PutObject, answered with botocore's names for the answer's headers (values as text: a full parse
        costs 0.1 ms); None when botocore has to send this one. Raises botocore's errors."""
        outcome: Future = Future()
        if not self.put_async(bucket, key, data, params, lambda answer, error: outcome.set_exception(error)
                              if error else outcome.set_result(answer)):
            return None
        return outcome.result()

    def put_async(self, bucket: str, key: str, data: bytes, params: Dict[str, Any],
                  done: Callable[[Optional[Dict[str, str]], Optional[BaseException]], None]) -> bool:
        """Start a PutObject and return: awscrt's thread calls done(answer, None), the answer as put gives
        it, or done(None, botocore's error) when it ends. False (and no call) when botocore has to send it."""
        headers = self.headers(params)
        if headers is None:
            return False

        def answered(reply: Optional[Tuple[Dict[str, str], bytes]], error: Optional[BaseException]) -> None:
            done(None if reply is None else {name: reply[0][header] for header, name in self.put_answer.items()
                                             if header in reply[0]}, error)
        self._start('PutObject', 'PUT', bucket, key, [('Content-Length', str(len(data))), *headers], data,
                    len(data), answered)
        return True

    def get(self, bucket: str, key: str, params: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """GetObject, answered as botocore's get_object would (the body already read, in memory); None
        when botocore has to send this one. Raises botocore's errors."""
        headers = self.headers(params, 'GetObject')
        if headers is None:
            return None
        return self._get_response(*self._send('GetObject', 'GET', bucket, key, headers, None))

    def get_async(self, bucket: str, key: str, params: Dict[str, Any], size: int,
                  done: Callable[[Optional[Dict[str, Any]], Optional[BaseException]], None]) -> bool:
        """Start a GetObject of an object of this size and return: awscrt's thread calls done(response, None),
        the response as get gives it, or done(None, botocore's error). False (and no call) when botocore
        has to send it."""
        headers = self.headers(params, 'GetObject')
        if headers is None:
            return False

        def answered(reply: Optional[Tuple[Dict[str, str], bytes]], error: Optional[BaseException]) -> None:
            try:
                response = None if reply is None else self._get_response(*reply)
            except Exception as failure:  # noqa: BLE001 - a malformed answer, to the caller like any error
                response, error = None, failure
            done(response, error)
        self._start('GetObject', 'GET', bucket, key, headers, None, size, answered)
        return True

    def _start(self, operation: str, method: str, bucket: str, key: str, headers: List[Tuple[str, str]],
               data: Optional[bytes], size: int,
               done: Callable[[Optional[Tuple[Dict[str, str], bytes]], Optional[BaseException]], None]) -> None:
        """One request no thread waits on: awscrt's thread calls done((answer headers by lower-case name,
        answer body), None) or done(None, botocore's error); cut at the deadline of a body of size bytes."""
        import awscrt.s3
        answer: Dict[str, str] = {}
        body: List[bytes] = []

        def on_headers(status_code: int, headers: List[Tuple[str, str]], **_: Any) -> None:
            answer.update((name.lower(), value) for name, value in headers)

        def on_body(chunk: bytes, **_: Any) -> None:
            body.append(chunk)

        def finished(future: Future) -> None:
            late = self.deadlines.forget(future)
            error = future.exception()
            if error is not None:
                done(None, TimeoutError(f'{operation}: no answer in {late:.0f} s') if late else
                     self._botocore_error(error, operation))
            else:
                done((answer, b''.join(body)), None)

        handle = self.s3.make_request(type=awscrt.s3.S3RequestType.DEFAULT, operation_name=operation,
                                      request=self._request(method, bucket, key, headers, data),
                                      on_headers=on_headers, on_body=on_body)
        self.deadlines.watch(handle.finished_future, handle.cancel, 2 * self.timeout + size / self.SLOWEST)
        handle.finished_future.add_done_callback(finished)

    def _get_response(self, answer: Dict[str, str], body: bytes) -> Dict[str, Any]:
        """A GetObject answer as botocore's get_object gives it, the body in memory."""
        import botocore.awsrequest
        import botocore.parsers
        shape = self.client.meta.service_model.operation_model('GetObject').output_shape
        response = botocore.parsers.RestXMLParser(timestamp_parser=parse_timestamp).parse(
            {'status_code': 200, 'headers': botocore.awsrequest.HeadersDict(answer), 'body': b''}, shape)
        response['Body'] = io.BytesIO(body)
        return response

    def _request(self, method: str, bucket: str, key: str, headers: List[Tuple[str, str]],
                 data: Optional[bytes]) -> Any:
        import awscrt.http
        from urllib.parse import quote
        host, prefix = self._base(bucket)
        return awscrt.http.HttpRequest(method, prefix + quote(key, safe='/~'), awscrt.http.HttpHeaders(
            [('Host', host), ('User-Agent', self.AGENT), *headers]), None if data is None else io.BytesIO(data))

    def _send(self, operation: str, method: str, bucket: str, key: str, headers: List[Tuple[str, str]],
              data: Optional[bytes]) -> Tuple[Dict[str, str], bytes]:
        """One request; (answer headers by lower-case name, answer body). Raises botocore's errors."""
        import awscrt.s3
        answer: Dict[str, str] = {}
        body: List[bytes] = []
        moved = [0]

        def on_headers(status_code: int, headers: List[Tuple[str, str]], **_: Any) -> None:
            answer.update((name.lower(), value) for name, value in headers)

        def on_body(chunk: bytes, **_: Any) -> None:
            body.append(chunk)
            moved[0] += len(chunk)

        def on_progress(count: int) -> None:
            moved[0] += count

        handle = self.s3.make_request(type=awscrt.s3.S3RequestType.DEFAULT, operation_name=operation,
                                      request=self._request(method, bucket, key, headers, data),
                                      on_headers=on_headers, on_body=on_body, on_progress=on_progress)
        try:
            self._wait(handle, moved, operation)
        except Exception as error:  # noqa: BLE001 - awscrt's errors, as botocore's
            raise self._botocore_error(error, operation) from None
        return answer, b''.join(body)

    def _botocore_error(self, error: BaseException, operation: str) -> BaseException:
        """An awscrt error as botocore would have raised it (others as they are)."""
        import awscrt.exceptions
        import awscrt.s3
        if isinstance(error, awscrt.s3.S3ResponseError):
            return self._client_error(error, operation)
        if isinstance(error, awscrt.exceptions.AwsCrtError):
            return ConnectionError(f'{operation}: {error.name}: {error.message}')
        return error

    def _wait(self, handle: Any, moved: List[int], operation: str) -> None:
        """Wait while bytes move; a request silent for RequestTimeout seconds is cancelled (like botocore)."""
        import concurrent.futures
        seen = -1
        while True:
            try:
                return handle.finished_future.result(timeout=self.timeout)
            except concurrent.futures.TimeoutError:
                if moved[0] == seen:
                    handle.cancel()
                    raise TimeoutError(f'{operation}: no progress in {self.timeout} s') from None
                seen = moved[0]

    def _client_error(self, error: Any, operation: str) -> Exception:
        """botocore's ClientError for an error answer, parsed by botocore's own S3 parser."""
        import botocore.exceptions
        import botocore.parsers
        response = {'status_code': error.status_code, 'headers': dict(error.headers or ()),
                    'body': error.body or b''}
        shape = self.client.meta.service_model.operation_model(operation).output_shape
        parsed = botocore.parsers.create_parser('rest-xml').parse(response, shape)
        return botocore.exceptions.ClientError(parsed, operation)


def client_for(config: Config, side: str, pool_size: int, credentials: Any = None, region: str = '',
               loader: Any = None, lane: bool = True) -> Any:
    """The S3 client of the source ('Src') or destination ('Des') side of a job; credentials (and their
    region, unless the side names one) given here replace the side's profile; lane=False: no CRT lane (a
    short job: it would cost more to start than it saves)."""
    return make_client('' if credentials is not None else getattr(config, f'{side}ProfileName'),
                       getattr(config, f'{side}EndPointURL'), getattr(config, f'{side}Region') or region, pool_size,
                       'source' if side == 'Src' else 'destination', config.RetryMode,
                       config.AddressingStyle, config.SignatureVersion, config.VerifyTLS, config.RequestTimeout,
                       credentials, lane=lane and config.UseCRT == 'auto', loader=loader)


def check_bucket(client: Any, bucket: str, prefix: str, role: str, extra: Optional[Dict[str, str]] = None,
                 page_size: int = 1) -> Dict[str, Any]:
    """Prove endpoint, credentials and bucket work by listing a page of keys (one by default), which it
    returns; raise ConfigError if not."""
    import botocore.exceptions
    endpoint = client.meta.endpoint_url
    try:
        return client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=page_size, **(extra or {}))
    except botocore.exceptions.SSLError as error:
        raise ConfigError(f'TLS error talking to the {role} endpoint {endpoint}: {describe_error(error)}: '
                          'check the URL and certificates') from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError) as error:
        raise ConfigError(f'cannot reach the {role} endpoint {endpoint}: {describe_error(error)}: '
                          'check the endpoint URL and the network') from None
    except botocore.exceptions.ClientError as error:
        code = error_code(error)
        if code in CREDENTIAL_ERROR_CODES:
            raise ConfigError(f'{role} credentials rejected by {endpoint} ({code}): check the profile\'s '
                              'access key, secret key and session token') from None
        if code in ('NoSuchBucket', '404'):
            raise ConfigError(f'{role} bucket {bucket!r} does not exist at {endpoint}: create it or fix the '
                              'bucket name') from None
        if code in ('AccessDenied', '403', 'AllAccessDisabled'):
            raise ConfigError(f'access denied listing {role} bucket {bucket!r}: the credentials need '
                              's3:ListBucket on it') from None
        raise ConfigError(f'cannot list {role} bucket {bucket!r} at {endpoint}: {describe_error(error)}') from None
    except botocore.exceptions.BotoCoreError as error:
        raise ConfigError(f'cannot use the {role} endpoint {endpoint}: {describe_error(error)}') from None


class Retrier:
    """Runs a request again after transient errors, with exponential backoff and full jitter."""

    def __init__(self, max_retry: int, stop: threading.Event, base: float = 0.5, cap: float = 30.0) -> None:
        self.max_retry = max_retry
        self.stop = stop
        self.base = base
        self.cap = cap
        self.retries = 0          # requests run again so far (the in-flight window backs off on them)
        self.refused: Callable[[], bool] = lambda: False    # the job's check, gone on beside, refused it (waits)

    def call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - sorted by is_retryable
                if not is_retryable(error) or attempt >= self.max_retry:
                    raise
                if self.refused():      # the check's line says what is wrong, no retry is logged
                    raise Stopped() from None
                attempt += 1
                self.retries += 1
                delay = self.delay(attempt)
                logger.warning('%s failed (%s); retry %d of %d in %.1fs', what, describe_error(error),
                               attempt, self.max_retry, delay)
                self.sleep(delay)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number attempt (1, 2, ...): exponential backoff, full jitter."""
        return random.uniform(0, min(self.cap, self.base * 2 ** attempt))

    def sleep(self, seconds: float) -> None:
        """Wait; raises Stopped if the run stops meanwhile."""
        if self.stop.wait(seconds):
            raise Stopped() from None


def _connect_seconds(url: str) -> float:
    """How long a TCP handshake with the host of url takes (one round trip); 0 if it cannot be made."""
    import socket
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    started = time.monotonic()
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == 'https' else 80)), 5):
            return time.monotonic() - started
    except (OSError, ValueError):
        return 0.0


def in_background(function: Callable[..., Any], *args: Any) -> Future:
    """function(*args) in a daemon thread, as a Future: a caller that gives up on it does not wait for it
    (or keep the process alive), as a ThreadPoolExecutor would."""
    future: Future = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(function(*args))
        except BaseException as error:  # noqa: BLE001 - handed to whoever asks the future
            future.set_exception(error)
    threading.Thread(target=run, name=getattr(function, '__name__', 'background'), daemon=True).start()
    return future


def list_objects(client: Any, bucket: str, prefix: str, page_size: int, retry: Optional[Retrier] = None,
                 extra: Optional[Dict[str, str]] = None, folders: bool = False,
                 first_page: Optional[Dict[str, Any]] = None) -> Iterator[Dict[str, Any]]:
    """Every object below prefix, page by page (each page retried on transient errors), in key order;
    folders=True: only the objects directly in prefix, then {'Prefix': ...} for each folder in it;
    first_page: the answer to the first request, already at hand (check_bucket's)."""
    call = retry.call if retry else (lambda _what, function, **kwargs: function(**kwargs))
    token, seen = '', set()
    while True:
        args: Dict[str, Any] = {'Bucket': bucket, 'Prefix': prefix, 'MaxKeys': page_size, **(extra or {})}
        if folders:
            args['Delimiter'] = '/'
        if token:
            args['ContinuationToken'] = token
        page = first_page or call(f'ListObjectsV2 {bucket}/{prefix}', client.list_objects_v2, **args)
        first_page = None
        yield from page.get('Contents', ())
        yield from page.get('CommonPrefixes', ())
        token = page.get('NextContinuationToken') or ''
        if not page.get('IsTruncated') or not token or token in seen:
            return
        seen.add(token)


###############################################################################
# Checksums ###################################################################
###############################################################################

def md5_of(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode('ascii')


MD5_ETAG = re.compile(r'[0-9a-f]{32}(-[0-9]+)?')       # S3's ETags: an MD5, or the MD5 of the parts' MD5s '-N'
MULTIPART_ETAG = re.compile(r'[0-9a-f]{32}-[0-9]+')


def clean_etag(etag: str) -> str:
    return (etag or '').strip().strip('"').lower()


def multipart_etag(part_digests: List[bytes]) -> str:
    """The ETag S3 gives a multipart object: md5 of the concatenated part MD5s, '-', part count."""
    return f'{hashlib.md5(b"".join(part_digests)).hexdigest()}-{len(part_digests)}'


def md5_hex_etag(etag: str) -> Optional[bytes]:
    """The MD5 digest an ETag stands for, or None if the ETag is not a plain MD5."""
    etag = clean_etag(etag)
    if len(etag) == 32:
        try:
            return bytes.fromhex(etag)
        except ValueError:
            return None
    return None


def _awscrt_checksums(why: str) -> Any:
    try:
        import awscrt.checksums
    except ImportError:
        raise ConfigError(f'{why} needs the awscrt package (AWS\'s C runtime): pip install awscrt') from None
    return awscrt.checksums


class Checksum:
    """An S3 additional checksum (CRC32C, CRC64NVME or SHA256): per part, and for the whole object."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.parameter = 'Checksum' + algorithm
        self.full_object = algorithm == 'CRC64NVME'   # S3 keeps CRC64NVME as a whole-object CRC
        if algorithm == 'SHA256':
            self.of: Callable[[bytes], bytes] = lambda data: hashlib.sha256(data).digest()
            return
        crt = _awscrt_checksums(f'ChecksumAlgorithm = {algorithm}')
        width = 8 if algorithm == 'CRC64NVME' else 4
        compute, self._combine = getattr(crt, algorithm.lower()), getattr(crt, 'combine_' + algorithm.lower())
        self.of = lambda data: compute(data).to_bytes(width, 'big')
        self.width = width

    @staticmethod
    def available() -> bool:
        """Whether CRCs can be computed here (awscrt installed)."""
        import importlib.util
        return importlib.util.find_spec('awscrt') is not None

    def object_value(self, parts: List[Tuple[bytes, int]]) -> str:
        """What S3 reports for an object made of these (part checksum, part size) parts."""
        return self.full_value(parts) if self.full_object else self.composite_value(parts)

    def full_value(self, parts: List[Tuple[bytes, int]]) -> str:
        """The checksum of the whole object's bytes, combined from its parts' (CRCs only)."""
        value = int.from_bytes(parts[0][0], 'big')
        for checksum, size in parts[1:]:
            value = self._combine(value, int.from_bytes(checksum, 'big'), size)
        return b64(value.to_bytes(self.width, 'big'))

    def composite_value(self, parts: List[Tuple[bytes, int]]) -> str:
        """S3's checksum-of-checksums of a multipart object: the checksum of the part checksums, '-N'."""
        return f'{b64(self.of(b"".join(checksum for checksum, _ in parts)))}-{len(parts)}'

    def matches(self, reported: str, parts: List[Tuple[bytes, int]]) -> bool:
        """Whether a store's whole-object value fits these parts (composite with or without '-N', or full)."""
        if self.full_object:
            return reported == self.full_value(parts)
        composite = self.composite_value(parts)
        if reported in (composite, composite.split('-')[0]):
            return True
        return self.algorithm != 'SHA256' and reported == self.full_value(parts)


@dataclasses.dataclass(frozen=True)
class WholeChecksum:
    """A checksum the source keeps of the whole object, and how to compute it over the bytes we read."""
    name: str                                  # 'crc64ecma' (OSS), 'crc64nvme', 'crc32', 'sha256'... (S3)
    expected: int
    compute: Callable[[bytes], int]
    combine: Optional[Callable[[int, int, int], int]] = None    # (crc of A, crc of B, len(B)) -> crc of A+B

    def over(self, parts: List[Tuple[int, int]]) -> int:
        """The checksum of the object made of these (part crc, part size) in order."""
        value = parts[0][0]
        for crc, size in parts[1:]:
            value = self.combine(value, crc, size)  # type: ignore[misc]
        return value


WHOLE_CHECKSUMS = ('CRC64NVME', 'CRC32C', 'CRC32', 'SHA256', 'SHA1')    # strongest first


def whole_checksum(response: Dict[str, Any]) -> Optional[WholeChecksum]:
    """The full-object checksum a GetObject / HeadObject answer reports (ChecksumMode=ENABLED), as an
    end-to-end check over the bytes we read; None if there is none (or only one of parts). A multipart
    object's value counts only when declared FULL_OBJECT (or CRC64NVME, never composite): some stores
    report a checksum of part checksums without saying so."""
    kind = response.get('ChecksumType', '')
    if kind not in ('', 'FULL_OBJECT'):
        return None
    multipart = '-' in clean_etag(response.get('ETag', ''))
    for algorithm in WHOLE_CHECKSUMS:
        value = response.get('Checksum' + algorithm, '')
        if not value or '-' in value or (multipart and not kind and algorithm != 'CRC64NVME'):
            continue
        expected = int.from_bytes(base64.b64decode(value), 'big')
        if algorithm.startswith('SHA'):
            digest = getattr(hashlib, algorithm.lower())
            return WholeChecksum(algorithm.lower(), expected,
                                 lambda data: int.from_bytes(digest(data).digest(), 'big'))
        try:
            crt = _awscrt_checksums(algorithm)
        except ConfigError:
            continue
        return WholeChecksum(algorithm.lower(), expected, getattr(crt, algorithm.lower()),
                             getattr(crt, 'combine_' + algorithm.lower(), None))
    return None


###############################################################################
# Sources #####################################################################
###############################################################################
@dataclasses.dataclass(frozen=True)
class SourceObject:
    """One file or object to copy, as the source described it when listed."""
    key: str            # relative to the source folder/prefix, '/'-separated
    size: int
    version: str        # differs whenever the content may differ: mtime_ns of a file, ETag of an object
    location: str       # absolute path or full source key
    problem: str = ''   # why it cannot be copied; then only key and location are meaningful
    version_id: str = ''  # an S3 versionId every read asks for, or '' (the current version)

    @property
    def identity(self) -> str:
        return f'{self.location}|{self.size}|{self.version}'


@dataclasses.dataclass
class Info:
    """What travels with the bytes: metadata and tags for the destination, and a whole-object checksum."""
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)   # ContentType, ..., Metadata
    tags: str = ''                                                    # URL-encoded, as PutObject's Tagging
    whole: Optional[WholeChecksum] = None
    stamp: Dict[str, str] = dataclasses.field(default_factory=dict)   # extra x-amz-meta-s3u-* entries
    md5: Optional[bytes] = None           # the MD5 of the bytes read, as the source states it (plain ETag)


META_HEADERS = ('ContentType', 'ContentEncoding', 'ContentDisposition', 'ContentLanguage', 'CacheControl',
                'Expires')
STAMP_PREFIX = 's3u-'


def _key_problem(key: str) -> str:
    """Why a relative key cannot name an S3 object, or ''."""
    try:
        encoded = key.encode('utf-8')
    except UnicodeEncodeError:
        return 'file name is not valid UTF-8: rename it'
    if len(encoded) > MAX_KEY_BYTES:
        return f'key is {len(encoded)} bytes, S3 allows {MAX_KEY_BYTES}: shorten the path'
    return ''


def printable(name: str) -> str:
    """A file name that cannot be encoded (undecodable bytes), shown with \\xNN escapes."""
    return name.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


class Source:
    """What the engine may ask of a source, as an rclone backend: list, read a range, describe. A new source is
    one subclass (and one line in open_job); the defaults say what a source cannot do."""

    reads_locally = False       # reads cost no round trip: small files are read where they are planned, and
                                # parts found at the destination can be proven by re-hashing them
    single = ''                 # the one file or key selected (SrcFileIndex), else ''

    def describe(self) -> str:
        """What the source is, for messages and the report."""
        raise NotImplementedError

    def check(self) -> None:
        """ConfigError if the source cannot be used."""

    def objects(self) -> Iterator[SourceObject]:
        """Every selected object, in S3 key order, streamed."""
        raise NotImplementedError

    def small_job(self, files: int, size: int, total: int) -> bool:
        """Whether the job is at most `files` objects, each below `size` bytes, `total` bytes in all, as far as
        it is known without a request (a job so short that its first writes are its write check)."""
        return False

    def read(self, obj: SourceObject, offset: int, length: int) -> bytes:
        """Bytes of a range, pinned to the listed version of obj (SourceChanged / SourceGone otherwise)."""
        raise NotImplementedError

    def info(self, obj: SourceObject) -> Info:
        """Metadata that travels with the bytes: Content-Type, user metadata, tags, whole-object checksum."""
        return Info()

    def fetch(self, obj: SourceObject) -> Tuple[bytes, Info]:
        """A whole small object and its metadata (in one request where the source can)."""
        return self.read(obj, 0, obj.size), self.info(obj)

    def fetch_async(self, obj: SourceObject,
                    done: Callable[[Optional[Tuple[bytes, Info]], Optional[BaseException]], None]) -> bool:
        """Start a fetch without a thread of ours, done() called at its end; False (no call) when it cannot."""
        return False

    def current(self, obj: SourceObject) -> SourceObject:
        """The object as it is now (SourceGone if it no longer exists)."""
        return obj

    def changed(self, obj: SourceObject) -> bool:
        """Whether the object differs from when it was listed."""
        return False

    def vanished(self, location: str) -> bool:
        """Whether an object a run once started to copy is gone, so its unfinished upload is nobody's."""
        return False

    def stamp(self, obj: SourceObject) -> Dict[str, str]:
        """What identifies this version (stored as x-amz-meta-s3u-* at the destination)."""
        return {}

    def match_name(self, obj: SourceObject) -> str:
        """The name ignore-list patterns are matched against."""
        return obj.location

    def copy_source(self, obj: SourceObject) -> Dict[str, str]:
        """Where CopyObject / UploadPartCopy read the object from (only sources on an S3 endpoint)."""
        raise ServerSideUnavailable('the source is not on an S3 endpoint')


class LocalSource(Source):
    """Files below a local folder (recursive, in S3 key order) or one file in it."""

    reads_locally = True

    def small_job(self, files: int, size: int, total: int) -> bool:
        listed = []
        for obj in self.objects():
            listed.append(obj)
            total -= obj.size
            if len(listed) > files or obj.size >= size or total < 0:
                return False
        self.listed = listed        # a short job's listing is kept: its planner need not walk the folder again
        return True

    def __init__(self, root: str, single: str = '*') -> None:
        self.root = os.path.abspath(root)
        self.single = '' if single.strip() in ('', '*') else single.strip()
        self.listed: Optional[List[SourceObject]] = None

    def describe(self) -> str:
        return os.path.join(self.root, self.single) if self.single else self.root

    def check(self) -> None:
        if not os.path.exists(self.root):
            quoted = os.path.basename(self.root)[-1:] in ('"', "'")
            raise ConfigError(f'source folder not found: {self.root}: fix SrcDir' +
                              (' (values are taken as written: leave out the quotes)' if quoted else ''))
        if not os.path.isdir(self.root):
            raise ConfigError(f'SrcDir {self.root} is a file, not a folder: set SrcDir to its folder '
                              'and SrcFileIndex to its name')
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConfigError(f'source folder {self.root} is not readable: check its permissions')
        if self.single:
            path = os.path.join(self.root, self.single)
            if not os.path.isfile(path):
                raise ConfigError(f'source file not found: {path}: fix SrcFileIndex (relative to SrcDir) '
                                  'or set it to *')

    def objects(self) -> Iterator[SourceObject]:
        if self.listed is not None:
            yield from self.listed
            return
        if self.single:
            key = self.single.replace(os.sep, '/').strip('/')
            described = self._describe_file(os.path.join(self.root, self.single), key)
            if described is not None:
                yield described
            return
        yield from self._walk(self.root, '', set())

    def _walk(self, folder: str, prefix: str, ancestors: set) -> Iterator[SourceObject]:
        """Yield files in S3 key order: entries sorted by name, with '/' after folder names."""
        try:
            folder_stat = os.stat(folder)
            entries = list(os.scandir(folder))
        except OSError as error:
            yield SourceObject(printable(prefix.rstrip('/') or '.'), 0, '', printable(folder),
                               f'cannot list folder: {error.strerror}')
            return
        ancestors = ancestors | {(folder_stat.st_dev, folder_stat.st_ino)}
        ordered = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            ordered.append((entry.name + ('/' if is_dir else ''), is_dir, entry))
        ordered.sort(key=lambda item: item[0])
        for _, is_dir, entry in ordered:
            key = prefix + entry.name
            if is_dir:
                try:
                    target = os.stat(entry.path)
                except OSError as error:
                    yield SourceObject(printable(key), 0, '', printable(entry.path),
                                       f'cannot open folder: {error.strerror}')
                    continue
                if (target.st_dev, target.st_ino) in ancestors:
                    logger.warning('skipping %s: symbolic link loop', printable(entry.path))
                    continue
                yield from self._walk(entry.path, key + '/', ancestors)
            else:
                described = self._describe_file(entry.path, key)
                if described is not None:
                    yield described

    @staticmethod
    def _describe_file(path: str, key: str) -> Optional[SourceObject]:
        try:
            info = os.stat(path)
        except OSError as error:
            reason = 'broken symbolic link' if os.path.islink(path) else error.strerror
            return SourceObject(printable(key), 0, '', printable(path), f'cannot read file: {reason}')
        if not stat.S_ISREG(info.st_mode):
            logger.warning('skipping %s: not a regular file', printable(path))
            return None
        problem = _key_problem(key)
        if problem:
            return SourceObject(printable(key), info.st_size, '', printable(path), problem)
        return SourceObject(key, info.st_size, str(info.st_mtime_ns), path)

    def read(self, obj: SourceObject, offset: int, length: int) -> bytes:
        try:
            with open(obj.location, 'rb') as handle:
                handle.seek(offset)
                data = handle.read(length)
        except FileNotFoundError:
            raise SourceGone('the file was deleted during the copy') from None
        except OSError as error:
            raise SourceGone(f'cannot read file: {error.strerror}') from None
        if len(data) != length:
            raise SourceChanged(f'file shrank while being read ({offset + len(data)} bytes at most)')
        return data

    def info(self, obj: SourceObject) -> Info:
        content_type = mimetypes.guess_type(obj.location, strict=False)[0]
        return Info({'ContentType': content_type} if content_type else {})

    def fetch(self, obj: SourceObject) -> Tuple[bytes, Info]:
        """The whole file, checked against its listed size and mtime on the same open handle (plain system
        calls: a buffered file object would add three more per file)."""
        try:
            handle = os.open(obj.location, os.O_RDONLY | getattr(os, 'O_BINARY', 0))
            try:
                data = os.read(handle, obj.size + 1)
                while 0 < len(data) < obj.size:             # a short read (network file systems)
                    more = os.read(handle, obj.size + 1 - len(data))
                    if not more:
                        break
                    data += more
                now = os.fstat(handle)
            finally:
                os.close(handle)
        except FileNotFoundError:
            raise SourceGone('file vanished') from None
        except OSError as error:
            raise SourceGone(f'cannot read file: {error.strerror}') from None
        if len(data) != obj.size or now.st_size != obj.size or str(now.st_mtime_ns) != obj.version:
            raise SourceChanged('file changed since it was listed')
        return data, self.info(obj)

    def current(self, obj: SourceObject) -> SourceObject:
        """The object as it is now (re-stat); raises SourceGone if it vanished."""
        if not os.path.lexists(obj.location):
            raise SourceGone('the file was deleted during the copy')
        described = self._describe_file(obj.location, obj.key)
        if described is None or described.problem:
            raise SourceGone(described.problem if described else 'no longer a regular file')
        return described

    def changed(self, obj: SourceObject) -> bool:
        """Whether the file differs (size or mtime) from when it was listed."""
        return self.current(obj).identity != obj.identity

    def vanished(self, location: str) -> bool:
        """Whether a file below this folder that a run once started to copy is gone (no run lists it again)."""
        return location.startswith(self.root + os.sep) and not os.path.lexists(location)

    @staticmethod
    def stamp(obj: SourceObject) -> Dict[str, str]:
        return {'s3u-src-size': str(obj.size), 's3u-src-mtime': obj.version}

    @staticmethod
    def match_name(obj: SourceObject) -> str:
        return obj.location.replace(os.sep, '/')


class S3Source(Source):
    """Objects below a prefix of a bucket (any S3 endpoint), read by ranged GETs pinned to their ETag."""

    def __init__(self, client: Any, bucket: str, prefix: str, single: str = '*', page_size: int = 1000,
                 retry: Optional[Retrier] = None, requester_pays: bool = False, tags: bool = False,
                 copy_metadata: bool = True) -> None:
        self.client = client
        self.copy_metadata = copy_metadata
        self.bucket = bucket
        self.prefix = prefix + '/' if prefix else ''
        self.single = '' if single.strip() in ('', '*') else single.strip().lstrip('/')
        self.page_size = page_size
        self.retry = retry
        self.extra = {'RequestPayer': 'requester'} if requester_pays else {}
        self.tags = tags
        self.resolve_versions = False     # current() answers the versionId of the current version

    def describe(self) -> str:
        return f's3://{self.bucket}/{self.prefix}{self.single}'

    def check(self) -> None:
        check_bucket(self.client, self.bucket, self.prefix, 'source', self.extra)
        if self.single:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.prefix + self.single, **self.extra)
            except Exception as error:  # noqa: BLE001 - translated to one line for the user
                if error_code(error) in ('404', 'NoSuchKey', 'NotFound'):
                    raise ConfigError(f'source object not found: {self.describe()}: fix SrcFileIndex '
                                      '(relative to SrcPrefix) or set it to *') from None
                raise ConfigError(f'cannot read source object {self.describe()}: {describe_error(error)}') from None

    def objects(self) -> Iterator[SourceObject]:
        if self.single:
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + self.single, **self.extra)
            yield self._describe(self.prefix + self.single, head['ContentLength'], head.get('ETag', ''))
            return
        for item in list_objects(self.client, self.bucket, self.prefix, self.page_size, self.retry, self.extra):
            yield self._describe(item['Key'], item['Size'], item.get('ETag', ''))

    def _describe(self, full_key: str, size: int, etag: str) -> SourceObject:
        """The object, its ETag quoted as GET answers it (some stores list ETags without the quotes)."""
        key = full_key[len(self.prefix):]
        etag = etag if not etag or etag.startswith(('"', 'W/')) else f'"{etag}"'
        return SourceObject(key, size, etag, full_key, _key_problem(key))

    def _get(self, obj: SourceObject, **args: Any) -> Dict[str, Any]:
        """GetObject pinned to the listed ETag (If-Match, and the answer's ETag checked too); small whole
        objects through the client's CRT lane, if it has one."""
        params = self._pinned(obj, **args)
        lane: Optional[CrtLane] = getattr(self.client, 'crt_lane', None)
        try:
            response = None
            if lane and 'Range' not in args and obj.size <= lane.MAX_BODY:
                response = lane.get(self.bucket, obj.location, params)
            if response is None:
                response = self.client.get_object(Bucket=self.bucket, Key=obj.location, **params)
        except Exception as error:  # noqa: BLE001 - sorted into changed / gone / transient
            raise self._translate(error, obj) from None
        self._check_pin(obj, response)
        return response

    def _pinned(self, obj: SourceObject, **args: Any) -> Dict[str, Any]:
        """A request's parameters for this object, pinned to its listed ETag (and its versionId, if it has one)."""
        return {**({'IfMatch': obj.version} if obj.version else {}),
                **({'VersionId': obj.version_id} if obj.version_id else {}), **self.extra, **args}

    @staticmethod
    def _check_pin(obj: SourceObject, response: Dict[str, Any]) -> None:
        if obj.version and response.get('ETag') and clean_etag(response['ETag']) != clean_etag(obj.version):
            raise SourceChanged('source object was overwritten during the copy')   # If-Match ignored

    @staticmethod
    def _translate(error: BaseException, obj: SourceObject) -> BaseException:
        code = error_code(error)
        if code in ('PreconditionFailed', '412'):
            return SourceChanged('source object was overwritten during the copy')
        if code in ('NoSuchKey', '404', 'NotFound', 'NoSuchVersion'):
            return SourceGone(f'source object version {obj.version_id} was deleted' if obj.version_id
                              else 'source object was deleted')
        if code in ('AccessDenied', '403') and obj.version_id:
            return SourceGone('access denied reading a version of the source object: grant s3:GetObjectVersion '
                              'or set GetObjectWithVersionId = False')
        if code in ('AccessDenied', '403'):
            return SourceGone('access denied reading the source object')
        if code == 'InvalidObjectState':
            return SourceGone('source object is archived (Glacier): restore it first')
        return error

    def read(self, obj: SourceObject, offset: int, length: int) -> bytes:
        if length == 0:
            return b''
        response = self._get(obj, Range=f'bytes={offset}-{offset + length - 1}')
        data = response['Body'].read()
        if len(data) != length:
            raise IOError(f'short read from source: {len(data)} of {length} bytes')
        return data

    def _info(self, response: Dict[str, Any], key: str) -> Info:
        meta = {name: response[name] for name in META_HEADERS if response.get(name)}
        user = {k: v for k, v in response.get('Metadata', {}).items() if not k.lower().startswith(STAMP_PREFIX)}
        if user:
            meta['Metadata'] = user
        info = Info(meta if self.copy_metadata else {})
        kms = response.get('ServerSideEncryption', '').startswith('aws:kms')
        if not kms and not response.get('SSECustomerAlgorithm'):
            info.md5 = md5_hex_etag(response.get('ETag', ''))       # SSE-KMS and SSE-C ETags are no MD5
        if response.get('VersionId') and response['VersionId'] != 'null':
            info.stamp['s3u-src-version-id'] = response['VersionId']
        info.whole = whole_checksum(response)
        if info.whole:
            info.stamp[f's3u-src-{info.whole.name}'] = response['Checksum' + info.whole.name.upper()]
        if self.tags:
            from urllib.parse import urlencode
            tag_set = self.client.get_object_tagging(Bucket=self.bucket, Key=key, **self.extra).get('TagSet', [])
            info.tags = urlencode([(tag['Key'], tag['Value']) for tag in tag_set])
        return info

    def info(self, obj: SourceObject) -> Info:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=obj.location,
                                           **self._pinned(obj, ChecksumMode='ENABLED'))
        except Exception as error:  # noqa: BLE001
            raise self._translate(error, obj) from None
        return self._info(head, obj.location)

    def fetch(self, obj: SourceObject) -> Tuple[bytes, Info]:
        return self._body_and_info(obj, self._get(obj, ChecksumMode='ENABLED'))

    def _body_and_info(self, obj: SourceObject, response: Dict[str, Any]) -> Tuple[bytes, Info]:
        data = response['Body'].read()
        if len(data) != obj.size:
            raise IOError(f'short read from source: {len(data)} of {obj.size} bytes')
        return data, self._info(response, obj.location)

    def fetch_async(self, obj: SourceObject,
                    done: Callable[[Optional[Tuple[bytes, Info]], Optional[BaseException]], None]) -> bool:
        """Start what fetch() does and return: awscrt's thread calls done((data, info), None) or done(None,
        the error fetch() would raise). False (and no call) when fetch() has to do it: no CRT lane, an
        object above its size, or tags to read (another request)."""
        lane: Optional[CrtLane] = getattr(self.client, 'crt_lane', None)
        if lane is None or obj.size > lane.MAX_BODY or self.tags:
            return False

        def answered(response: Optional[Dict[str, Any]], error: Optional[BaseException]) -> None:
            try:
                if response is None:
                    raise self._translate(error or IOError('GetObject: no answer'), obj)
                self._check_pin(obj, response)
                fetched = self._body_and_info(obj, response)
            except Exception as failure:  # noqa: BLE001 - to the caller, as fetch() would raise it
                done(None, failure)
                return
            done(fetched, None)
        return lane.get_async(self.bucket, obj.location, self._pinned(obj, ChecksumMode='ENABLED'), obj.size,
                              answered)

    def current(self, obj: SourceObject) -> SourceObject:
        """The object as it is now (the version obj.version_id, if set); with its versionId if it asked for
        one or resolve_versions is set."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=obj.location, **self.extra,
                                           **({'VersionId': obj.version_id} if obj.version_id else {}))
        except Exception as error:  # noqa: BLE001
            if error_code(error) in ('404', 'NoSuchKey', 'NotFound', 'NoSuchVersion') or obj.version_id:
                raise self._translate(error, obj) from None
            raise
        found = self._describe(obj.location, head['ContentLength'], head.get('ETag', ''))
        answered = '' if head.get('VersionId') in (None, 'null') else head['VersionId']
        return dataclasses.replace(found, version_id=answered if obj.version_id or self.resolve_versions else '')

    def changed(self, obj: SourceObject) -> bool:
        """Never observable after a successful copy: every read was pinned to the listed ETag."""
        return False

    @staticmethod
    def stamp(obj: SourceObject) -> Dict[str, str]:
        return {'s3u-src-size': str(obj.size), 's3u-src-etag': clean_etag(obj.version)}

    def match_name(self, obj: SourceObject) -> str:
        return f'{self.bucket}/{obj.location}'

    def copy_source(self, obj: SourceObject) -> Dict[str, str]:
        """Where CopyObject / UploadPartCopy read this object from (server-side copy)."""
        return {'Bucket': self.bucket, 'Key': obj.location, **({'VersionId': obj.version_id} if obj.version_id else {})}


class OssSource(Source):
    """Objects below a prefix of an Aliyun OSS bucket (oss2 SDK), verified end to end by OSS's CRC-64."""

    def __init__(self, bucket: Any, prefix: str, single: str = '*', page_size: int = 1000,
                 retry: Optional[Retrier] = None, copy_metadata: bool = True) -> None:
        import oss2
        self.oss2 = oss2
        self.copy_metadata = copy_metadata
        self.bucket = bucket
        self.prefix = prefix + '/' if prefix else ''
        self.single = '' if single.strip() in ('', '*') else single.strip().lstrip('/')
        self.page_size = page_size
        self.call = retry.call if retry else (lambda _what, function, *a, **k: function(*a, **k))
        poly, xor_out = oss2.utils.Crc64._POLY, oss2.utils.Crc64._XOROUT
        template = oss2.utils.crcmod.Crc(poly, initCrc=0, rev=True, xorOut=xor_out)
        combine = oss2.crc64_combine.mkCombineFun(poly, 0, True, xor_out)
        self.crc64 = WholeChecksum('crc64ecma', 0, lambda data: template.new(data).crcValue, combine)

    @classmethod
    def from_config(cls, config: Config, retry: Retrier) -> 'OssSource':
        """The OSS bucket of a job; credentials from OSS_ACCESS_KEY_ID/SECRET or the ini (with a warning)."""
        try:
            import oss2
        except ImportError:
            raise ConfigError('ALIOSS_TO_S3 needs the oss2 package: pip install oss2') from None
        key_id = os.environ.get('OSS_ACCESS_KEY_ID') or config.ali_access_key_id
        secret = os.environ.get('OSS_ACCESS_KEY_SECRET') or config.ali_access_key_secret
        if not key_id or not secret:
            raise ConfigError('no OSS credentials: set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET (or '
                              'ali_access_key_id / ali_access_key_secret in [ALIOSS_TO_S3])')
        SecretFilter.add(key_id, secret)
        if config.ali_access_key_secret and config.path and os.path.exists(config.path):
            if os.stat(config.path).st_mode & 0o077:
                logger.warning('%s holds the OSS secret and other users can read it: chmod 600 it, or use the '
                               'OSS_ACCESS_KEY_SECRET environment variable', config.path)
        endpoint = config.ali_endpoint if '://' in config.ali_endpoint else 'https://' + config.ali_endpoint
        bucket = oss2.Bucket(oss2.Auth(key_id, secret), endpoint, config.ali_SrcBucket,
                             connect_timeout=30, enable_crc=False)
        return cls(bucket, config.SrcPrefix, config.SrcFileIndex, config.ListPageSize, retry, config.CopyMetadata)

    def describe(self) -> str:
        return f'oss://{self.bucket.bucket_name}/{self.prefix}{self.single}'

    def check(self) -> None:
        try:
            self.bucket.list_objects(prefix=self.prefix, max_keys=1)
            if self.single:
                self.bucket.head_object(self.prefix + self.single)
        except self.oss2.exceptions.RequestError as error:
            raise ConfigError(f'cannot reach the OSS endpoint {self.bucket.endpoint}: {error}: check '
                              'ali_endpoint and the network') from None
        except self.oss2.exceptions.OssError as error:
            code, status = getattr(error, 'code', ''), getattr(error, 'status', 0)
            if code in ('InvalidAccessKeyId', 'SignatureDoesNotMatch') or status == 403 and not code:
                raise ConfigError(f'OSS credentials rejected ({code or status}): check the OSS AccessKey') from None
            if code == 'NoSuchBucket':
                raise ConfigError(f'OSS bucket {self.bucket.bucket_name!r} does not exist: fix ali_SrcBucket') from None
            if code == 'NoSuchKey' or status == 404:
                raise ConfigError(f'source object not found: {self.describe()}: fix SrcFileIndex') from None
            raise ConfigError(f'cannot list OSS bucket {self.bucket.bucket_name!r}: {code or status} '
                              f'{getattr(error, "message", "")}') from None

    def objects(self) -> Iterator[SourceObject]:
        if self.single:
            head = self.bucket.head_object(self.prefix + self.single)
            yield self._describe(self.prefix + self.single, head.content_length, head.etag)
            return
        marker, seen = '', set()
        while True:
            page = self.call(f'OSS ListObjects {self.prefix}', self.bucket.list_objects, prefix=self.prefix,
                             marker=marker, max_keys=self.page_size)
            for item in page.object_list:
                yield self._describe(item.key, item.size, item.etag)
            marker = page.next_marker or ''
            if not page.is_truncated or not marker or marker in seen:
                return
            seen.add(marker)

    def _describe(self, full_key: str, size: int, etag: str) -> SourceObject:
        key = full_key[len(self.prefix):]
        return SourceObject(key, size, (etag or '').strip('"'), full_key, _key_problem(key))

    def _get(self, obj: SourceObject, byte_range: Optional[Tuple[int, int]] = None) -> Any:
        headers = {'If-Match': f'"{obj.version}"'} if obj.version else {}
        try:
            result = self.bucket.get_object(obj.location, byte_range=byte_range, headers=headers)
        except self.oss2.exceptions.OssError as error:
            status = getattr(error, 'status', 0)
            if status == 412:
                raise SourceChanged('source object was overwritten during the copy') from None
            if status == 404:
                raise SourceGone('source object was deleted') from None
            if status == 403:
                raise SourceGone('access denied reading the source object') from None
            raise
        if obj.version and result.etag and result.etag.strip('"') != obj.version:
            raise SourceChanged('source object was overwritten during the copy')
        return result

    def read(self, obj: SourceObject, offset: int, length: int) -> bytes:
        if length == 0:
            return b''
        # OSS returns the WHOLE object when the range end passes its size: never ask for that.
        end = min(offset + length, obj.size) - 1
        data = self._get(obj, (offset, end)).read()
        if len(data) != length:
            raise IOError(f'short read from OSS: {len(data)} of {length} bytes')
        return data

    def _info(self, headers: Any) -> Info:
        lowered = {k.lower(): v for k, v in headers.items()}
        names = {'content-type': 'ContentType', 'content-encoding': 'ContentEncoding',
                 'content-disposition': 'ContentDisposition', 'content-language': 'ContentLanguage',
                 'cache-control': 'CacheControl', 'expires': 'Expires'}
        meta: Dict[str, Any] = {names[h]: v for h, v in lowered.items() if h in names and v}
        if 'Expires' in meta:
            from email.utils import parsedate_to_datetime
            try:
                meta['Expires'] = parsedate_to_datetime(meta['Expires'])
            except (TypeError, ValueError):
                del meta['Expires']
        user = {k[len('x-oss-meta-'):]: v for k, v in lowered.items() if k.startswith('x-oss-meta-')}
        if user:
            meta['Metadata'] = user
        info = Info(meta if self.copy_metadata else {})
        crc = lowered.get('x-oss-hash-crc64ecma')
        if crc:
            info.whole = dataclasses.replace(self.crc64, expected=int(crc))
            info.stamp['s3u-src-crc64ecma'] = crc
        return info

    def info(self, obj: SourceObject) -> Info:
        try:
            head = self.bucket.head_object(obj.location)
        except self.oss2.exceptions.OssError as error:
            if getattr(error, 'status', 0) == 404:
                raise SourceGone('source object was deleted') from None
            raise
        if obj.version and head.etag.strip('"') != obj.version:
            raise SourceChanged('source object was overwritten during the copy')
        return self._info(head.headers)

    def fetch(self, obj: SourceObject) -> Tuple[bytes, Info]:
        result = self._get(obj)
        data = result.read()
        if len(data) != obj.size:
            raise IOError(f'short read from OSS: {len(data)} of {obj.size} bytes')
        return data, self._info(result.headers)

    def current(self, obj: SourceObject) -> SourceObject:
        try:
            head = self.bucket.head_object(obj.location)
        except self.oss2.exceptions.OssError as error:
            if getattr(error, 'status', 0) == 404:
                raise SourceGone('source object was deleted') from None
            raise
        return self._describe(obj.location, head.content_length, head.etag)

    def changed(self, obj: SourceObject) -> bool:
        """Never observable after a successful copy: every read was pinned to the listed ETag."""
        return False

    @staticmethod
    def stamp(obj: SourceObject) -> Dict[str, str]:
        return {'s3u-src-size': str(obj.size), 's3u-src-etag': clean_etag(obj.version)}

    def match_name(self, obj: SourceObject) -> str:
        return f'{self.bucket.bucket_name}/{obj.location}'


###############################################################################
# Destination #################################################################
###############################################################################

class MalformedResponse(IOError):
    """The server's answer lacks what every valid answer has (a garbled response): retry."""


def _etag_of(response: Dict[str, Any], operation: str) -> str:
    etag = response.get('ETag')
    if not etag:
        raise MalformedResponse(f'{operation} response has no ETag')
    return etag


@dataclasses.dataclass(frozen=True)
class Upload:
    """An unfinished multipart upload at the destination."""
    key: str
    upload_id: str
    initiated: float


@dataclasses.dataclass(frozen=True)
class Part:
    """A part of a multipart upload, as ListParts reports it."""
    number: int
    size: int
    etag: str
    checksum: str = ''      # base64 additional checksum, when the store reports one


@dataclasses.dataclass
class SmallPut:
    """A whole small file in memory and what its PutObject sends with it."""
    data: bytes
    info: Info
    md5: Optional[bytes]               # Content-MD5; None when the additional checksum alone vouches
    vouched: bool                      # md5 is the source's own (its ETag), not hashed here
    checksum: Optional[bytes]          # the additional checksum (ChecksumAlgorithm), raw
    args: Dict[str, Any]


Sent = Tuple[SmallPut, str, str]       # a PutObject the store accepted: what was sent, its ETag, the checksum echoed


@dataclasses.dataclass
class PartDone:
    """A part that is at the destination: what the upload's Complete and the verification need."""
    number: int
    size: int
    etag: str
    md5: Optional[bytes] = None        # known when the ETag is MD5-based or we hashed the data
    checksum: Optional[bytes] = None   # the additional checksum (ChecksumAlgorithm), raw
    crc: Optional[int] = None          # the source's whole-object CRC algorithm over this part
    hashed: bool = False               # md5 was computed here from the bytes sent (not taken from the ETag)


def reported_checksums(response: Dict[str, Any]) -> Dict[str, str]:
    """The additional checksums in a store's answer: 'CRC32C' -> base64 value."""
    return {name[len('Checksum'):]: value for name, value in response.items()
            if name.startswith('Checksum') and name != 'ChecksumType' and isinstance(value, str)}


@dataclasses.dataclass(frozen=True)
class Head:
    """What HeadObject says of a destination object."""
    size: int
    etag: str
    metadata: Dict[str, str]           # user metadata, keys lower-cased (some stores capitalise them)
    checksums: Dict[str, str]          # 'CRC32C' -> base64 value (ChecksumMode=ENABLED)
    md5_etag: bool = True              # the ETag is MD5-based (not with SSE-KMS or SSE-C)


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    """How new objects are written: storage class, encryption, ACL, additional checksum."""
    storage_class: str = 'STANDARD'
    sse: str = 'none'
    kms_key_id: str = ''
    acl: Optional[str] = None
    requester_pays: bool = False
    checksum: Optional[Checksum] = None
    auto_checksum: bool = False        # CRC64NVME if the destination proves it verifies it (write check)

    @classmethod
    def from_config(cls, config: Config) -> 'WriteOptions':
        named = config.ChecksumAlgorithm not in ('none', 'auto')
        return cls(config.StorageClass, config.SSE, config.SSEKMSKeyId, config.ACL,
                   config.RequestPayer == 'requester', Checksum(config.ChecksumAlgorithm) if named else None,
                   config.ChecksumAlgorithm == 'auto' and Checksum.available())

    def on_store(self, gcs: bool, where: str) -> 'WriteOptions':
        """These options as the store names them: S3's storage classes written as GCS's on Google Cloud Storage;
        ConfigError for a GCS class anywhere else."""
        if gcs and self.storage_class in GCS_CLASS_FOR:
            logger.info('StorageClass %s is written as %s on Google Cloud Storage', self.storage_class,
                        GCS_CLASS_FOR[self.storage_class])
            return dataclasses.replace(self, storage_class=GCS_CLASS_FOR[self.storage_class])
        if not gcs and self.storage_class in GCS_ONLY_CLASSES:
            raise ConfigError(f'StorageClass = {self.storage_class} is a Google Cloud Storage class and {where} is not '
                              'on GCS: use one of S3\'s (STANDARD_IA, GLACIER_IR, GLACIER, DEEP_ARCHIVE, ...)')
        return self

    def args(self) -> Dict[str, Any]:
        """Arguments every new object gets (PutObject, CreateMultipartUpload, CopyObject)."""
        args: Dict[str, Any] = {}
        if self.storage_class != 'STANDARD':
            args['StorageClass'] = self.storage_class
        if self.sse != 'none':
            args['ServerSideEncryption'] = self.sse
            if self.sse == 'aws:kms' and self.kms_key_id:
                args['SSEKMSKeyId'] = self.kms_key_id
        if self.acl:
            args['ACL'] = self.acl
        if self.requester_pays:
            args['RequestPayer'] = 'requester'
        return args


class Meter:
    """Bytes handed to the network so far, counted as they go (the in-flight window's measure)."""

    def __init__(self) -> None:
        self.total = 0
        self.lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self.lock:
            self.total += nbytes


class Payload:
    """A request body handed to the socket in 256 KiB slices, without copying the data. urllib3 sends
    a body under the connect timeout, and one sendall() of a whole part (what a bytes body gets) must
    finish within it: on a slow, shared long link a 16 MiB part never would. A slice must only move
    within it; and a few dozen sends per part cost nothing, unlike BytesIO's thousands of 16 KiB ones."""

    SLICE = 256 * 1024

    def __init__(self, data: bytes, meter: Meter) -> None:
        self.view = memoryview(data)
        self.position = 0
        self.meter = meter

    def __len__(self) -> int:
        return len(self.view)

    def read(self, amount: Optional[int] = -1) -> memoryview:
        end = len(self.view) if amount is None or amount < 0 else self.position + max(amount, self.SLICE)
        chunk = self.view[self.position:end]
        self.position += len(chunk)
        self.meter.add(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = max(0, min(len(self.view), offset + (self.position if whence == 1 else
                                                               len(self.view) if whence == 2 else 0)))
        return self.position

    def tell(self) -> int:
        return self.position


class Destination:
    """The bucket/prefix that receives the copies, with the S3 calls the engine needs."""

    def __init__(self, client: Any, bucket: str, prefix: str, options: WriteOptions = WriteOptions(),
                 page_size: int = 1000, retry: Optional[Retrier] = None) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix + '/' if prefix else ''
        self.options = options
        self.checksum = options.checksum
        self.checksum_verified = False      # the store refuses bytes that do not fit the checksum
        self.page_size = page_size
        self.retry = retry
        self.payer = {'RequestPayer': 'requester'} if options.requester_pays else {}
        self.lane: Optional[CrtLane] = getattr(client, 'crt_lane', None)
        self.index: Optional[Dict[str, List[Upload]]] = None    # unfinished uploads by key, when complete
        self.index_lock = threading.Lock()
        self.probe_key = f'{self.prefix}{self.PROBE}-{os.urandom(6).hex()}'   # this run's own write check
        self.first_page: Optional[Dict[str, Any]] = None     # the check's listing, until objects() uses it
        self.probe_abort: Optional[Future] = None
        self.round_trip: Optional[float] = None     # seconds the write check's quickest request took
        self.meter = Meter()
        self.gcs = 'storage.googleapis.com' in (client.meta.endpoint_url or '')   # Google Cloud Storage (XML API)
        self.unchecked: Optional[Callable[[], None]] = None    # a short job: no write check, its writes are one
        self.refusal: Optional[ConfigError] = None  # ... and what refused them
        self.listing_refusal: Optional[ConfigError] = None     # what the check's listing refused, if it went beside
        self.verdict: Optional[Tuple[str, bool]] = None     # its answer: checksum to send, whether it is verified
        self.trusted = False                        # that answer came from an earlier run (StoreFacts)
        self.heads: Dict[str, Future] = {}          # HEADs of a few files' keys, sent beside the check's listing
        self.pending_check: Optional[Future] = None     # that listing, when the first writes do not wait for it
        self.checked_page: Optional[Dict[str, Any]] = None  # its first page
        self.written_unless_there: Dict[str, str] = {}  # key -> ETag of writes sent before the listing answered
        self.conditional_writes: Optional[bool] = None  # the store honours If-None-Match on PutObject (None: unknown)
        endpoint = self.endpoint or ''
        # Whether a write to a missing bucket creates it (then no write may go before the check's listing)
        self.creates_buckets = False if '.amazonaws.com' in endpoint or self.gcs else None

    def describe(self) -> str:
        return f's3://{self.bucket}/{self.prefix}'

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def key_for(self, relative_key: str) -> str:
        return self.prefix + relative_key

    def check_listing(self, index: bool = False) -> None:
        """Endpoint, credentials and bucket work (a listing, its first page kept for objects()); index=True
        also loads the upload index, side by side (round trips count on long links; that try is not retried:
        its errors would come before the listing's plainer ones). Reads only."""
        loading = in_background(self.load_upload_index, False) if index else None
        handshake = in_background(_connect_seconds, self.endpoint)
        started = time.monotonic()
        self.first_page = self.checked_page = check_bucket(self.client, self.bucket, self.prefix, 'destination',
                                                           self.payer, self.page_size)
        # A first measure of the round trip (the write check's is closer): the listing went on a new connection,
        # so it took TCP's handshake too, which is measured beside it.
        took = time.monotonic() - started
        self.round_trip = max(took / 2, took - handshake.result())
        self.learn_store(self.first_page)
        if loading and loading.exception():
            self._load_index_after(loading.exception())

    def ask_heads(self, keys: List[str]) -> None:
        """Send a HEAD for each key (relative) beside the check's listing: a few files then need no more listing."""
        pool = ThreadPoolExecutor(max(1, min(32, len(keys))), 'head')
        self.heads = {key: pool.submit(self.head, self.key_for(key)) for key in keys}
        pool.shutdown(wait=False)

    @property
    def heads_pay(self) -> bool:
        """The HEADs answer the planner in fewer round trips than the listing: it has more than one page, or
        the first writes do not wait for it."""
        return bool(self.heads) and (self.pending_check is not None or
                                     bool(self.first_page and self.first_page.get('IsTruncated')))

    def learn_store(self, answer: Dict[str, Any]) -> None:
        """Whether an answer of the destination shows Google Cloud Storage (it sends x-goog-* headers, e.g.
        x-goog-generation, cloud.google.com/storage/docs/xml-api/reference-headers), and the write options
        as that store names them."""
        headers = answer.get('ResponseMetadata', {}).get('HTTPHeaders', {}) if answer else {}
        self.gcs = self.gcs or any(name.lower().startswith('x-goog-') for name in headers)
        server = str(headers.get('server', '')).lower()
        self.creates_buckets = self.creates_buckets or any(name in server for name in BUCKETS_MADE_BY_WRITES)
        self.options = self.options.on_store(self.gcs, self.describe())

    def _load_index_after(self, error: BaseException) -> None:
        """Load the upload index again, once; without it every multipart file lists its own key's uploads."""
        try:
            self.load_upload_index()
        except Exception as again:  # noqa: BLE001 - an optimisation only
            logger.warning('cannot list the unfinished uploads at the destination (%s, then %s); each file '
                           'asks for its own', describe_error(error), describe_error(again))

    PROBE = '.s3_upload-write-check'

    def check_write(self, probe_checksum: bool = True) -> None:
        """Start and abort a multipart upload (the abort goes on beside the transfer, see finish_check()): proves
        s3:PutObject and the write options. With a checksum (or auto and probe_checksum), a part sent under
        a wrong one shows whether the store verifies it (the verdict, which the next runs reuse through
        StoreFacts). Only after check_listing: some stores create a missing bucket on a write."""
        import botocore.exceptions
        probe = self.probe_key
        trial = self.options.auto_checksum and probe_checksum and self.checksum is None
        checksum = Checksum('CRC64NVME') if trial else self.checksum
        try:
            started = time.monotonic()
            upload_id = self._retried('CreateMultipartUpload (write check)', self._create, probe, {}, checksum)
            self.round_trip = min(self.round_trip or math.inf, time.monotonic() - started)
        except botocore.exceptions.ClientError as error:
            code = error_code(error)      # no permission is no answer about checksums
            if not trial or code in ('AccessDenied', '403') or code in CREDENTIAL_ERROR_CODES:
                raise self._write_refused(error) from None
            logger.info('the destination takes no CRC64NVME uploads (%s): Content-MD5 is sent', describe_error(error))
            checksum = None
            try:
                upload_id = self._retried('CreateMultipartUpload (write check)', self._create, probe, {}, None)
            except botocore.exceptions.ClientError as again:
                raise self._write_refused(again) from None
        verified = False
        try:
            if checksum and probe_checksum:
                started = time.monotonic()
                verified = self._refuses_wrong_checksum(probe, upload_id, checksum)
                self.round_trip = min(self.round_trip or math.inf, time.monotonic() - started)
                if trial and not verified:
                    checksum = None
        finally:
            self.probe_abort = in_background(self._abort_probe, probe, upload_id)
        self.verdict = (checksum.algorithm if checksum else '', verified)
        self.checksum, self.checksum_verified = checksum, verified
        logger.debug('destination checksum: %s (the store verifies it: %s)', self.verdict[0], verified)

    def write_unchecked(self, refused: Callable[[], None]) -> None:
        """A short job goes without a write check: its first writes are the check (Content-MD5 proves their
        bytes). A write refused the way the check would refuse it ends the run with the check's one line
        (refusal; refused() is called at once)."""
        self.unchecked = refused

    def check_beside(self, listing: Future, refused: Callable[[], None]) -> None:
        """A short job: the check's listing goes on beside its first writes, which are its write check too
        (write_unchecked); if the listing refuses the job, the run ends with its one line."""
        self.write_unchecked(refused)
        self.pending_check = listing
        listing.add_done_callback(lambda done: self._check_failed(done.exception()))

    def _check_failed(self, error: Optional[BaseException]) -> bool:
        """Keep the refusal of the check's listing (its line comes first: it says what is wrong with the job)."""
        if error is None:
            return False
        self.listing_refusal = error if isinstance(error, ConfigError) else ConfigError(
            f'cannot check the destination {self.describe()}: {describe_error(error)}')
        if self.unchecked:
            self.unchecked()
        return True

    def check_refused(self) -> bool:
        """Whether the check's listing, gone on beside the first requests, refused the job (waits for it)."""
        if self.pending_check is None:
            return False
        wait([self.pending_check])
        return self._check_failed(self.pending_check.exception())

    def refuses(self, error: BaseException) -> bool:
        """Whether this error of a write without a write check is the check's refusal (then kept in refusal);
        with the check's listing still going on beside, its answer is waited for first."""
        if self.unchecked is None:
            return False
        if self.check_refused():
            return True
        if error_code(error) not in WRITE_REFUSALS:
            return False
        with self.index_lock:
            self.refusal = self.refusal or self._write_refused(error)
        self.unchecked()
        return True

    def trust(self, known: Dict[str, Any]) -> None:
        """Take an earlier run's verdict (StoreFacts) instead of probing."""
        if known.get('checksum'):
            self.checksum = Checksum(known['checksum'])
        self.checksum_verified = bool(known.get('verified')) and self.checksum is not None
        self.round_trip = known.get('round_trip') or self.round_trip
        self.verdict = (self.checksum.algorithm if self.checksum else '', self.checksum_verified)
        self.trusted = True

    def _abort_probe(self, key: str, upload_id: str) -> None:
        try:
            self.abort(key, upload_id)
        except Exception as error:  # noqa: BLE001 - the next run's check removes it
            logger.warning('could not abort the write check upload of %s: %s', key, describe_error(error))

    def finish_check(self) -> None:
        """Wait for the write check's upload to be aborted (it goes on beside the transfer); ConfigError if
        the writes of a job without a write check were refused."""
        if self.probe_abort:
            self.probe_abort.result()
        self.check_refused()
        if self.listing_refusal or self.refusal:
            raise self.listing_refusal or self.refusal

    def _write_refused(self, error: BaseException) -> ConfigError:
        code = error_code(error)
        if code in ('AccessDenied', '403'):
            return ConfigError(f'no permission to write to destination bucket {self.bucket!r}: the '
                               'credentials need s3:PutObject there')
        if code == 'InvalidStorageClass':
            return ConfigError(f'the destination does not accept StorageClass {self.options.storage_class}: '
                               'choose another one')
        return ConfigError(f'cannot start an upload in destination bucket {self.bucket!r} with these '
                           f'settings (StorageClass, SSE, ACL, ChecksumAlgorithm): {describe_error(error)}')

    def _refuses_wrong_checksum(self, key: str, upload_id: str, checksum: Checksum) -> bool:
        """Whether the store refuses a part whose checksum does not fit its bytes: then a part it accepts
        under our checksum holds our bytes, and no MD5 needs to be computed here."""
        import botocore.exceptions

        def refused() -> bool:
            try:
                self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1,
                                        Body=b'probe', **{checksum.parameter: b64(checksum.of(b'not the probe'))},
                                        **self.payer)
            except botocore.exceptions.ClientError as error:
                if error_code(error) in ('BadDigest', 'InvalidDigest', 'XAmzContentChecksumMismatch'):
                    return True
                raise
            return False
        try:
            return self._retried(f'UploadPart under a wrong {checksum.algorithm} (write check)', refused)
        except Stopped:
            raise
        except Exception as error:  # noqa: BLE001 - any other answer: not shown to verify
            logger.info('the destination answered a part under a wrong %s with %s: taken as not verifying '
                        'checksums, Content-MD5 is sent', checksum.algorithm, describe_error(error))
            return False

    def _retried(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """function(*args, **kwargs), again after transient errors when the destination has a retrier."""
        return self.retry.call(what, function, *args, **kwargs) if self.retry else function(*args, **kwargs)

    def object_args(self, info: Info, stamp: Dict[str, str]) -> Dict[str, Any]:
        """Arguments of a new object: the source's metadata and tags, our stamps, the write options."""
        args = {name: value for name, value in info.meta.items() if name != 'Metadata'}
        args['Metadata'] = {**info.meta.get('Metadata', {}), **stamp, **info.stamp}
        if info.tags:
            args['Tagging'] = info.tags
        args.update(self.options.args())
        return args

    def objects(self) -> Iterator[Tuple[str, int, str]]:
        """(relative key, size, etag) of every object below the prefix, in key order."""
        if self.check_refused():        # its first page is the check's listing, gone on beside the first writes
            raise Stopped()
        first_page, self.first_page = self.first_page, None
        for item in list_objects(self.client, self.bucket, self.prefix, self.page_size, self.retry, self.payer,
                                 first_page=first_page):
            yield item['Key'][len(self.prefix):], item['Size'], item.get('ETag', '')

    def uploads(self, prefix: str) -> Iterator[Upload]:
        """Unfinished multipart uploads whose key starts with prefix, page by page."""
        key_marker, upload_marker, seen = '', '', set()
        while True:
            args = {'Bucket': self.bucket, 'Prefix': prefix, 'MaxUploads': self.page_size, **self.payer}
            if key_marker:
                args['KeyMarker'] = key_marker
                if upload_marker:
                    args['UploadIdMarker'] = upload_marker
            page = self._uploads_page(args, retried=False)
            for item in page.get('Uploads', ()):
                initiated = item.get('Initiated')
                yield Upload(item['Key'], item['UploadId'], initiated.timestamp() if initiated else 0.0)
            if not page.get('IsTruncated'):
                return
            key_marker = page.get('NextKeyMarker') or ''
            upload_marker = page.get('NextUploadIdMarker') or ''
            if not key_marker or (key_marker, upload_marker) in seen:
                logger.warning('the destination reports more unfinished uploads under %r but gives no '
                               'marker to continue: using the first pages only', prefix)
                return
            seen.add((key_marker, upload_marker))

    INDEX_LIMIT = 100_000

    def _uploads_page(self, args: Dict[str, Any], retried: bool) -> Dict[str, Any]:
        """One ListMultipartUploads answer; rclone serve s3 answers NoSuchUpload where none was ever started."""
        try:
            if retried:
                return self._retried('ListMultipartUploads', self.client.list_multipart_uploads, **args)
            return self.client.list_multipart_uploads(**args)
        except Exception as error:  # noqa: BLE001 - sorted by code
            if error_code(error) == 'NoSuchUpload':
                return {}
            raise

    def load_upload_index(self, retried: bool = True) -> None:
        """List every unfinished upload below the prefix once, so each file needs no listing of its own
        (one request per run instead of one per multipart file; per-key listings if paging is broken);
        retried=False: transient errors are not retried (nor logged) but raised."""
        index: Dict[str, List[Upload]] = {}
        count = 0
        key_marker, upload_marker = '', ''
        while True:
            args = {'Bucket': self.bucket, 'Prefix': self.prefix, 'MaxUploads': self.page_size, **self.payer}
            if key_marker:
                args.update(KeyMarker=key_marker, UploadIdMarker=upload_marker)
            page = self._uploads_page(args, retried)
            for item in page.get('Uploads', ()):
                initiated = item.get('Initiated')
                index.setdefault(item['Key'], []).append(
                    Upload(item['Key'], item['UploadId'], initiated.timestamp() if initiated else 0.0))
                count += 1
            if not page.get('IsTruncated'):
                break
            next_markers = (page.get('NextKeyMarker') or '', page.get('NextUploadIdMarker') or '')
            if not next_markers[0] or next_markers == (key_marker, upload_marker) or count > self.INDEX_LIMIT:
                return        # cannot page on (or too many): ask per key instead
            key_marker, upload_marker = next_markers
        index.pop(self.probe_key, None)
        for key in [key for key in index if key.startswith(self.prefix + self.PROBE)]:
            for leftover in index.pop(key):         # the write checks of runs killed mid-check
                with contextlib.suppress(Exception):
                    self.abort(leftover.key, leftover.upload_id)
        with self.index_lock:
            self.index = index

    def indexed_uploads(self, key: str) -> List[Upload]:
        """Unfinished uploads of this key known from the index (no request; [] without an index)."""
        with self.index_lock:
            return list(self.index.get(key, ())) if self.index else []

    def uploads_for(self, key: str) -> List[Upload]:
        """Unfinished uploads of exactly this key (not 'key.bak'), newest first."""
        with self.index_lock:
            indexed = None if self.index is None else list(self.index.get(key, ()))
        found = indexed if indexed is not None else [upload for upload in self.uploads(key) if upload.key == key]
        return sorted(found, key=lambda upload: upload.initiated, reverse=True)

    def parts(self, key: str, upload_id: str) -> List[Part]:
        """Every part of an upload, following ListParts pagination."""
        parts: Dict[int, Part] = {}
        marker = 0
        field = self.checksum.parameter if self.checksum else ''
        while True:
            page = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                          MaxParts=self.page_size, PartNumberMarker=marker, **self.payer)
            for item in page.get('Parts', ()):
                parts[item['PartNumber']] = Part(item['PartNumber'], item['Size'], item['ETag'],
                                                 item.get(field, '') if field else '')
            next_marker = int(page.get('NextPartNumberMarker') or 0)
            if not page.get('IsTruncated') or next_marker <= marker:
                return [parts[number] for number in sorted(parts)]
            marker = next_marker

    def _checksum_arg(self, checksum: Optional[bytes]) -> Dict[str, str]:
        return {self.checksum.parameter: b64(checksum)} if self.checksum and checksum is not None else {}

    def condition_refused(self, error: BaseException) -> None:
        """A PutObject on condition that no object was at its key failed: learn from the error whether the store
        honours that condition (an object was there) or takes none (a store that does not implement it)."""
        code, status = error_code(error), error_status(error)
        if code in CONDITION_FAILED:
            self.conditional_writes = True
        elif code in ('NotImplemented', 'InvalidRequest', 'InvalidArgument') or status == 501:
            self.conditional_writes = False

    def condition_taken(self, key: str, etag: str, there: Optional[Future] = None) -> None:
        """Such a PutObject succeeded. If the key's HEAD, sent beside it (there), found another object there,
        the store ignores the condition, and the next writes wait for their answer (they would replace
        unchanged objects); without a HEAD, the check's listing tells (judge_conditions)."""
        if there is None:
            with self.index_lock:
                self.written_unless_there[key] = etag
        elif there.done() and there.exception() is None:
            head = there.result()
            if head is not None and clean_etag(head.etag) != clean_etag(etag):
                self.conditional_writes = False

    def judge_conditions(self) -> None:
        """After the run: an object the check's listing found, with another ETag, at a key written on
        condition that no object was there shows that the store ignores the condition."""
        listed = {item['Key']: item.get('ETag', '') for item in (self.checked_page or {}).get('Contents', ())}
        if self.conditional_writes is None and any(
                key in listed and clean_etag(listed[key]) != clean_etag(etag)
                for key, etag in self.written_unless_there.items()):
            self.conditional_writes = False

    def _echo(self, response: Dict[str, Any]) -> str:
        """The additional checksum the store reports back for what it received ('' if none)."""
        return response.get(self.checksum.parameter, '') if self.checksum else ''

    def put(self, key: str, data: bytes, md5: Optional[bytes], args: Dict[str, Any],
            checksum: Optional[bytes], only_new: bool = False) -> Tuple[str, str]:
        """PutObject, with Content-MD5 unless md5 is None; (ETag, the checksum the store reports back).
        only_new: on condition that no object is at the key (If-None-Match: *; CONDITION_FAILED if one is)."""
        params = self._put_params(md5, args, checksum, only_new)
        response = None
        if self.lane and len(data) <= self.lane.MAX_BODY and not only_new:
            response = self.lane.put(self.bucket, key, data, params)
            if response is not None:
                self.meter.add(len(data))
        if response is None:
            response = self.client.put_object(Bucket=self.bucket, Key=key, Body=Payload(data, self.meter), **params)
        return _etag_of(response, 'PutObject'), self._echo(response)

    def put_async(self, key: str, data: bytes, md5: Optional[bytes], args: Dict[str, Any], checksum: Optional[bytes],
                  done: Callable[[Optional[Tuple[str, str]], Optional[BaseException]], None],
                  only_new: bool = False) -> bool:
        """put without waiting, through the awscrt lane: its thread calls done((ETag, echo), None) or
        done(None, error) at the end. False (and no call) when the lane cannot carry it."""
        if not self.lane or len(data) > self.lane.MAX_BODY:
            return False
        params = self._put_params(md5, args, checksum, only_new)

        def answered(response: Optional[Dict[str, str]], error: Optional[BaseException]) -> None:
            if response is None:
                return done(None, error)
            self.meter.add(len(data))
            try:
                stored = _etag_of(response, 'PutObject'), self._echo(response)
            except MalformedResponse as malformed:
                return done(None, malformed)
            done(stored, None)

        return self.lane.put_async(self.bucket, key, data, params, answered)

    def _put_params(self, md5: Optional[bytes], args: Dict[str, Any], checksum: Optional[bytes],
                    only_new: bool = False) -> Dict[str, Any]:
        return {**({'ContentMD5': b64(md5)} if md5 else {}), **args, **self._checksum_arg(checksum),
                **({'IfNoneMatch': '*'} if only_new else {})}

    def create_upload(self, key: str, args: Dict[str, Any]) -> str:
        return self._create(key, args, self.checksum)

    def _create(self, key: str, args: Dict[str, Any], checksum: Optional[Checksum]) -> str:
        extra = dict(self.options.args(), **args)
        if checksum:
            extra['ChecksumAlgorithm'] = checksum.algorithm
            if checksum.full_object:
                extra['ChecksumType'] = 'FULL_OBJECT'
        return self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)['UploadId']

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes, md5: Optional[bytes],
                    checksum: Optional[bytes]) -> Tuple[str, str]:
        """UploadPart, with Content-MD5 unless md5 is None; (ETag, the checksum the store reports back)."""
        response = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                           Body=Payload(data, self.meter), **({'ContentMD5': b64(md5)} if md5 else {}),
                                           **self.payer, **self._checksum_arg(checksum))
        return _etag_of(response, 'UploadPart'), self._echo(response)

    def copy_part(self, key: str, upload_id: str, number: int, source: Dict[str, str], pin: str,
                  first: int, last: int) -> Tuple[str, str]:
        """UploadPartCopy of source bytes first..last (inclusive); returns (etag, base64 checksum or '')."""
        response = self.client.upload_part_copy(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, CopySource=source,
            CopySourceRange=f'bytes={first}-{last}', CopySourceIfMatch=pin, **self.payer)
        result = response.get('CopyPartResult', {})
        if not result.get('ETag'):
            raise ServerSideUnavailable('the store\'s UploadPartCopy answer has no ETag')
        return result['ETag'], result.get(self.checksum.parameter, '') if self.checksum else ''

    def copy_object(self, key: str, source: Dict[str, str], pin: str, args: Dict[str, Any]) -> str:
        extra = dict(args, MetadataDirective='REPLACE', TaggingDirective='REPLACE')
        if self.checksum:
            extra['ChecksumAlgorithm'] = self.checksum.algorithm
        response = self.client.copy_object(Bucket=self.bucket, Key=key, CopySource=source,
                                           CopySourceIfMatch=pin, **extra)
        etag = response.get('CopyObjectResult', {}).get('ETag')
        if not etag:
            raise ServerSideUnavailable('the store\'s CopyObject answer has no ETag')
        return etag

    def complete(self, key: str, upload_id: str, parts: List[PartDone],
                 full_checksum: str = '') -> Tuple[str, Dict[str, str]]:
        """Complete the upload; the object's ETag and the additional checksums the store answers with."""
        listed = []
        for part in parts:
            entry: Dict[str, Any] = {'PartNumber': part.number, 'ETag': part.etag}
            if self.checksum and part.checksum is not None:
                entry[self.checksum.parameter] = b64(part.checksum)
            listed.append(entry)
        extra: Dict[str, Any] = dict(self.payer)
        if full_checksum and self.checksum:
            extra.update({self.checksum.parameter: full_checksum, 'ChecksumType': 'FULL_OBJECT'})
        response = self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                         MultipartUpload={'Parts': listed}, **extra)
        return response.get('ETag', ''), reported_checksums(response)

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id, **self.payer)
        except Exception as error:  # noqa: BLE001 - an upload that is already gone is fine
            if error_code(error) not in ('NoSuchUpload', '404'):
                raise
        self.forget_upload(key, upload_id)

    def forget_upload(self, key: str, upload_id: str) -> None:
        """An upload that was completed or aborted leaves the index."""
        with self.index_lock:
            if self.index is not None and key in self.index:
                self.index[key] = [u for u in self.index[key] if u.upload_id != upload_id]

    def head(self, key: str) -> Optional[Head]:
        """Size, ETag, user metadata and additional checksums of an object; None when it does not exist."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode='ENABLED', **self.payer)
        except Exception as error:  # noqa: BLE001
            if error_code(error) in ('404', 'NoSuchKey', 'NotFound'):
                return None
            raise
        metadata = {k.lower(): v for k, v in response.get('Metadata', {}).items()}
        encrypted = response.get('ServerSideEncryption', '').startswith('aws:kms') or \
            bool(response.get('SSECustomerAlgorithm'))
        return Head(response['ContentLength'], response.get('ETag', ''), metadata, reported_checksums(response),
                    not encrypted)


class StoreFacts:
    """What earlier runs learned of each destination (endpoint, bucket and write options): that it takes our
    writes, the checksum it verifies, its round trip. Kept beside the journal and trusted until contradicted,
    so a rerun pays no write-check probe."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, encoding='utf-8') as handle:
                self.facts: Dict[str, Dict[str, Any]] = json.load(handle)
        except (OSError, ValueError):
            self.facts = {}

    @staticmethod
    def name(destination: Destination, probe_checksum: bool) -> str:
        options = destination.options
        return json.dumps([destination.endpoint, destination.bucket, options.args(), options.auto_checksum,
                           options.checksum.algorithm if options.checksum else '', probe_checksum])

    def known(self, destination: Destination, probe_checksum: bool) -> Optional[Dict[str, Any]]:
        return self.facts.get(self.name(destination, probe_checksum))

    STORE_FACTS = ('conditional_writes', 'creates_buckets', 'round_trip')     # of the endpoint, whatever the bucket

    def recall_store(self, destination: Destination) -> None:
        """Tell the destination what earlier runs learned of its endpoint (what it does not know itself)."""
        known = self.facts.get(json.dumps([destination.endpoint]), {})
        for fact in self.STORE_FACTS:
            if getattr(destination, fact) is None and known.get(fact) is not None:
                setattr(destination, fact, known[fact])

    def learn(self, destination: Destination, probe_checksum: bool) -> None:
        """Keep what the write check and the writes found (nothing if they found nothing new)."""
        name = json.dumps([destination.endpoint])
        store = {fact: getattr(destination, fact) for fact in self.STORE_FACTS if getattr(destination, fact) is not None}
        before = self.facts.get(name, {})
        if before.get('round_trip') and 0.8 < store.get('round_trip', 0) / before['round_trip'] < 1.25:
            store['round_trip'] = before['round_trip']      # the same link: not written again for a jitter
        learned = bool(store) and store != before
        if learned:
            self.facts[name] = store
        if destination.verdict is not None and not destination.trusted:
            self.facts[self.name(destination, probe_checksum)] = {
                'checksum': destination.verdict[0], 'verified': destination.verdict[1],
                'round_trip': destination.round_trip, 'learned': time.time()}
            learned = True
        if learned:
            self._save()

    def forget(self, destination: Destination, probe_checksum: bool) -> None:
        if self.facts.pop(self.name(destination, probe_checksum), None) is not None:
            self._save()

    def _save(self) -> None:
        try:
            with _private_open(self.path + '.tmp') as handle:
                json.dump(self.facts, handle)
            os.replace(self.path + '.tmp', self.path)
        except OSError as error:         # only a probe the next run pays again
            logger.debug('cannot keep what was learned of the stores in %s: %s', self.path, error)


###############################################################################
# Planner #####################################################################
###############################################################################

def part_size_for(size: int, chunk: int) -> int:
    """Part size for a file: chunk, grown to a whole MiB so no file needs more than 10,000 parts."""
    if size > MAX_OBJECT_SIZE:
        raise ValueError(f'{size} bytes is more than S3\'s 5 TiB object limit')
    if math.ceil(size / chunk) <= MAX_PARTS:
        return chunk
    return math.ceil(size / MAX_PARTS / MiB) * MiB


def part_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


def part_range(number: int, size: int, part_size: int) -> Tuple[int, int]:
    """(offset, length) of part number (1-based) of a file of size bytes."""
    offset = (number - 1) * part_size
    return offset, min(part_size, size - offset)


def parts_fit(parts: List[Part], size: int, part_size: int) -> bool:
    """Whether every listed part has exactly the size that part size gives it in this file."""
    if part_size < 1 or part_size > MAX_PART_SIZE:
        return False
    count = part_count(size, part_size)
    if count > MAX_PARTS or (count > 1 and part_size < MIN_PART_SIZE):
        return False
    return all(part.number <= count and part.size == part_range(part.number, size, part_size)[1]
               for part in parts)


class Filters:
    """What the job leaves out: ignore-list patterns on bucket/key (or the full path of a local file),
    then --include / --exclude rules on the key below the source prefix (the last matching rule wins)."""

    def __init__(self, ignore: Iterable[str] = (), rules: Iterable[Tuple[str, str]] = ()) -> None:
        self.ignore = [pattern for pattern in ignore if pattern]
        self.rules = list(rules)

    @classmethod
    def from_config(cls, config: Config, rules: Iterable[Tuple[str, str]] = ()) -> 'Filters':
        patterns: List[str] = []
        if config.IgnoreListFile:
            try:
                with open(config.IgnoreListFile, encoding='utf-8-sig') as handle:
                    patterns = cls.patterns_in(handle.read())
            except OSError as error:
                raise ConfigError(f'cannot read IgnoreListFile {config.IgnoreListFile}: {error.strerror}: fix '
                                  'the path or leave it empty') from None
            except UnicodeDecodeError:
                raise ConfigError(f'IgnoreListFile {config.IgnoreListFile} is not UTF-8 text: save it as UTF-8') from None
        return cls(patterns, rules)

    @staticmethod
    def patterns_in(text: str) -> List[str]:
        """The patterns of an ignore list: one per line; blank lines and # comments skipped."""
        return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith('#')]

    def excluded(self, key: str, name: str) -> str:
        """Why this object is left out ('' when it is selected)."""
        for pattern in self.ignore:
            if fnmatch.fnmatchcase(name, pattern):
                return f'ignore list: {pattern}'
        verdict = ''
        for kind, pattern in self.rules:
            if fnmatch.fnmatchcase(key, pattern):
                verdict = f'--exclude {pattern}' if kind == 'exclude' else ''
        return verdict


@dataclasses.dataclass
class Task:
    """One source object and what to do with it."""
    source: SourceObject
    key: str                  # destination key
    action: str               # 'send', 'skip', 'check' (same size there: compare more), 'exclude' or 'fail'
    reason: str = ''
    only_new: bool = False            # sent before the destination's answer for the key: only if no object is there
    there: Optional[Future] = None    # ... and that answer (a HEAD in flight), if one was asked


# A small file may go before the destination says whether its key is taken, on condition that it is not
# (If-None-Match: *), and so may this many bytes of them in all: what a rerun sends for nothing when the files
# are there already.
CONDITIONAL_PUT_BYTES, CONDITIONAL_BYTES = 256 * 1024, 4 * MiB


class Unanswered:
    """The bytes of files sent before the destination answered for their keys, up to CONDITIONAL_BYTES."""

    def __init__(self) -> None:
        self.sent = 0

    def take(self, size: int) -> bool:
        """Whether a file of this size may go before the answer (its bytes are then counted)."""
        if size > CONDITIONAL_PUT_BYTES or self.sent + size > CONDITIONAL_BYTES:
            return False
        self.sent += size
        return True


class DestinationIndex:
    """Answers 'is this key at the destination, with what size?' while both listings stream in key order.

    Memory stays constant: the destination listing is consumed in step with the source.
    If either side turns out not to be sorted, it falls back to a full in-memory index.
    """

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.listing = destination.objects()
        self.head: Optional[Tuple[str, int, str]] = None
        self.last_asked = ''
        self.last_listed = ''
        self.fallback: Optional[Dict[str, Tuple[int, str]]] = None
        self.started = False        # the listing is read from the first lookup on
        self.unanswered = Unanswered()

    def unknown(self, key: str, size: int) -> bool:
        """Whether this file goes before the listing answers (its first page is the check's, still on its way
        beside the first writes): then only if no object is at its key."""
        check = self.destination.pending_check
        return (not self.started and check is not None and not check.done()
                and self.destination.conditional_writes is not False and self.unanswered.take(size))

    @staticmethod
    def asked(key: str) -> Optional[Future]:
        """The HEAD in flight for this key (none: the listing answers)."""
        return None

    def _advance(self) -> None:
        self.head = next(self.listing, None)
        if self.head is not None:
            if self.head[0] < self.last_listed:
                self._use_fallback('destination listing is not in key order')
                return
            self.last_listed = self.head[0]

    def _use_fallback(self, why: str) -> None:
        logger.info('%s: indexing the whole destination listing in memory', why)
        self.fallback = {key: (size, etag) for key, size, etag in self.destination.objects()}
        self.head = None

    def lookup(self, key: str) -> Optional[Tuple[int, str]]:
        """(size, etag) of the destination object with this relative key, or None."""
        if not self.started:
            self.started = True
            self._advance()
        if self.fallback is None and key < self.last_asked:
            self._use_fallback('source listing is not in key order')
        self.last_asked = key
        if self.fallback is not None:
            return self.fallback.get(key)
        while self.head is not None and self.head[0] < key:
            self._advance()
            if self.fallback is not None:
                return self.fallback.get(key)
        if self.head is not None and self.head[0] == key:
            return self.head[1], self.head[2]
        return None


class HeadIndex:
    """For a job of a few files whose destination folder does not fit one listing page (or is not listed
    before the first writes): each key asked by HEAD, all at once (the HEADs were sent beside the check's
    listing), instead of paging through the folder. A small file need not wait for its HEAD (Unanswered): it
    is sent at once, on condition that no object is at the key yet."""

    def __init__(self, destination: Destination, answers: Dict[str, Future]) -> None:
        self.destination = destination
        self.answers = answers
        self.unanswered = Unanswered()

    def unknown(self, key: str, size: int) -> bool:
        """Whether this file goes before its HEAD answers (then only if no object is at its key)."""
        answer = self.answers.get(key)
        return (answer is not None and not answer.done() and self.destination.conditional_writes is not False
                and self.unanswered.take(size))

    def asked(self, key: str) -> Optional[Future]:
        return self.answers.get(key)

    def lookup(self, key: str) -> Optional[Tuple[int, str]]:
        answer = self.answers.get(key)
        head = answer.result() if answer else self.destination.head(self.destination.key_for(key))
        return (head.size, head.etag) if head is not None else None


def plan(source_objects: Iterable[SourceObject], destination: Destination, filters: Optional[Filters] = None,
         match_name: Callable[[SourceObject], str] = lambda obj: obj.location, compare: str = 'size',
         index: Optional[Any] = None) -> Iterator[Task]:
    """Decide, object by object as the listing streams, what to send and what is already there."""
    index = index or DestinationIndex(destination)
    for obj in source_objects:
        key = destination.key_for(obj.key)
        excluded = filters.excluded(obj.key, match_name(obj)) if filters else ''
        if excluded:
            yield Task(obj, key, 'exclude', excluded)
            continue
        if obj.problem:
            yield Task(obj, key, 'fail', obj.problem)
            continue
        problem = _key_problem(key)
        if problem:
            yield Task(obj, key, 'fail', problem)
            continue
        if obj.size > MAX_OBJECT_SIZE:
            yield Task(obj, key, 'fail', 'larger than S3\'s 5 TiB object limit')
            continue
        if index.unknown(obj.key, obj.size):
            yield Task(obj, key, 'send', 'sent unless an object is there', only_new=True, there=index.asked(obj.key))
            continue
        existing = index.lookup(obj.key)
        if existing is not None and existing[0] == obj.size:
            if compare == 'size':
                yield Task(obj, key, 'skip', 'same key and size at the destination')
            else:
                yield Task(obj, key, 'check', f'same size at the destination: comparing {compare}')
        else:
            yield Task(obj, key, 'send')


class ResumeJournal:
    """Which source each multipart upload we started belongs to, and which parts the store acknowledged
    (with their ETags), so reused parts are provably right.

    A JSON-lines file of {"op": "open"|"part"|"close", ...}; compacted on start, and read again when
    another process (a second worker on this machine) has added to it. A part the store listed but never
    acknowledged (its answer was cut off by a kill) is sent again. Lines are not fsync'ed: a kill loses
    none (they are in the OS's cache), and after a power cut an upload without its line is proven by
    re-hashing local parts or started over, never trusted.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.entries: Dict[str, Dict[str, Any]] = {}
        self.seen_size = -1
        self.broken = ''        # why the journal cannot be written (said once); the transfer goes on without it
        self._load()

    def _read(self) -> bool:
        entries: Dict[str, Dict[str, Any]] = {}
        try:
            with open(self.path, encoding='utf-8') as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash
                    if record.get('op') == 'open':
                        if 'parts' in record:       # journals of version 2.0 have no parts: all listed are kept
                            record['parts'] = {int(n): etag for n, etag in record['parts'].items()}
                        record['checksums'] = {int(n): value for n, value in record.get('checksums', {}).items()}
                        entries[record['upload_id']] = record
                    elif record.get('op') == 'part' and 'parts' in entries.get(record.get('upload_id'), {}):
                        entry = entries[record['upload_id']]
                        entry['parts'][int(record['number'])] = record['etag']
                        if record.get('checksum'):
                            entry['checksums'][int(record['number'])] = record['checksum']
                    elif record.get('op') == 'close':
                        entries.pop(record.get('upload_id'), None)
                    elif record.get('op') == 'abandon' and record.get('upload_id') in entries:
                        entries[record['upload_id']]['abandoned'] = True
                self.seen_size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            return False
        except OSError as error:
            logger.warning('cannot read resume journal %s: %s', self.path, error.strerror)
            return False
        self.entries = entries
        return True

    def _load(self) -> None:
        if not self._read():
            return
        temporary = self.path + f'.{os.getpid()}.tmp'
        try:
            with _private_open(temporary) as handle:
                for record in self.entries.values():
                    handle.write(json.dumps(record) + '\n')
            os.replace(temporary, self.path)
        except OSError as error:        # the old file stays as it was: compaction is only tidying
            with contextlib.suppress(OSError):
                os.remove(temporary)
            self._cannot_write(error)

    def _append(self, record: Dict[str, Any]) -> None:
        with self.lock:
            try:
                with _private_open(self.path, append=True) as handle:
                    handle.write(json.dumps(record) + '\n')
            except OSError as error:
                self._cannot_write(error)

    def _cannot_write(self, error: OSError) -> None:
        """A journal that cannot be written costs resumability, not the transfer: say so once and go on."""
        if self.broken:
            return
        self.broken = error.strerror or str(error)
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        logger.warning('cannot write the resume journal %s (%s): the transfer goes on, but after a crash the '
                       'parts sent meanwhile are re-read (local files) or sent again; %s', self.path, self.broken,
                       'LogDir is full: free space there or set LogDir to another disk' if full else
                       'check LogDir and its permissions')

    def record(self, bucket: str, key: str, upload_id: str, identity: str, part_size: int) -> None:
        entry = {'op': 'open', 'bucket': bucket, 'key': key, 'upload_id': upload_id,
                 'identity': identity, 'part_size': part_size, 'time': time.time(), 'parts': {}, 'checksums': {}}
        with self.lock:
            self.entries[upload_id] = entry
        self._append(entry)

    def part_done(self, upload_id: str, number: int, etag: str, checksum: str = '') -> None:
        """The store acknowledged this part with this ETag (and this base64 additional checksum)."""
        record = {'op': 'part', 'upload_id': upload_id, 'number': number, 'etag': clean_etag(etag)}
        with self.lock:
            entry = self.entries.get(upload_id)
            if entry is None or 'parts' not in entry:
                return
            entry['parts'][number] = clean_etag(etag)
            if checksum:
                entry['checksums'][number] = record['checksum'] = checksum
        self._append(record)

    def get(self, bucket: str, key: str, upload_id: str) -> Optional[Dict[str, Any]]:
        with self.lock:
            entry = self.entries.get(upload_id)
            if entry is None and self._grown():
                self._read()
                entry = self.entries.get(upload_id)
        if entry and entry.get('bucket') == bucket and entry.get('key') == key:
            return entry
        return None

    def forget(self, upload_id: str) -> None:
        with self.lock:
            known = self.entries.pop(upload_id, None)
        if known is not None:
            self._append({'op': 'close', 'upload_id': upload_id})

    def abandon(self, bucket: str, key: str, upload_id: str) -> None:
        """An upload given up on that could not be aborted now: the next run into this bucket aborts it."""
        with self.lock:
            known = upload_id in self.entries
        if not known:
            self.record(bucket, key, upload_id, '', 0)      # no identity: never trusted, only aborted
        with self.lock:
            self.entries[upload_id]['abandoned'] = True
        self._append({'op': 'abandon', 'upload_id': upload_id})

    def left_behind(self, bucket: str, prefix: str, vanished: Callable[[str], bool]) -> List[Dict[str, Any]]:
        """Uploads into bucket/prefix this journal knows to be nobody's: given up on, or of a source file
        that no longer exists (a run stopped, then the file was deleted: no later run would list it)."""
        with self.lock:
            if self._grown():
                self._read()
            entries = list(self.entries.values())
        return [entry for entry in entries if entry.get('bucket') == bucket and entry.get('key', '').startswith(prefix)
                and (entry.get('abandoned') or vanished(entry.get('identity', '').rsplit('|', 2)[0]))]

    def _grown(self) -> bool:
        try:
            return os.stat(self.path).st_size != self.seen_size
        except OSError:
            return False


def rebuilt_etag(read: Callable[[SourceObject, int, int], bytes], obj: SourceObject, etag: str, part_size: int,
                 chunk: int = 8 * MiB) -> str:
    """The ETag S3 gives obj's bytes when stored the way etag says: in one request (their MD5), or in parts of
    part_size (the MD5 of the parts' MD5s, '-N'); '' when that part size cannot make etag's part count. Read
    in chunks: a part may be gigabytes."""
    def md5_of_range(offset: int, length: int) -> bytes:
        digest = hashlib.md5()
        for start in range(offset, offset + length, chunk):
            digest.update(read(obj, start, min(chunk, offset + length - start)))
        return digest.digest()
    if '-' not in etag:
        return md5_of_range(0, obj.size).hex()
    count = part_count(obj.size, part_size) if part_size else 0
    if count != int(etag.split('-')[1] or 0):
        return ''
    return multipart_etag([md5_of_range(*part_range(number, obj.size, part_size)) for number in range(1, count + 1)])


###############################################################################
# Flow control ################################################################
###############################################################################

class RateLimiter:
    """A token bucket shared by all threads: caps the upload rate at BandwidthLimit. A request still
    waiting for its turn when the run stops is not sent (Stopped), rather than sent unthrottled."""

    def __init__(self, bytes_per_second: float, stop: threading.Event) -> None:
        self.rate = bytes_per_second
        self.stop = stop
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def take(self, nbytes: int) -> None:
        if self.rate <= 0 or nbytes <= 0:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + nbytes / self.rate
        if start > now and self.stop.wait(start - now):
            raise Stopped()


class MemoryBudget:
    """File data held in memory at once (parts and small files in flight) stays under a limit, which
    an InFlightWindow may move. Waiters get room in the order they asked, each woken alone (a hundred
    threads woken at every release would burn the CPU the transfer needs), except that a small one
    (up to a sixteenth of the limit) may pass larger ones that do not fit yet: small files go on
    beside big parts instead of queueing behind them. `waited`: anyone had to wait since it was cleared."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.limit = limit
        self.ceiling = limit                      # the limit the window moves under (MemoryLimit)
        self.stop = stop
        self.used = 0
        self.waited = False
        self.lock = threading.Lock()
        self.queue: collections.deque = collections.deque()     # [nbytes, granted Event] in arrival order

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Room for nbytes while the block runs."""
        room = self.take(nbytes)
        try:
            yield
        finally:
            self.give(room)

    def whole_file(self, nbytes: int) -> int:
        """The room a file sent in one request asks for: at most half the limit, so two go at once in the
        smallest window (one request each is faster than parts in flight where the store joins parts by
        copying them), as long as two whole ones fit in the ceiling."""
        return min(nbytes, self.limit // 2) if 2 * nbytes <= self.ceiling else nbytes

    def take(self, nbytes: int) -> int:
        """Wait for room for nbytes; the room granted (give it back), less if the limit shrank meanwhile.
        Raises Stopped if the run stops first."""
        with self.lock:
            nbytes = min(nbytes, self.limit)      # one part larger than the limit still goes, alone
            if (not self.queue or self._small(nbytes)) and self._fits(nbytes):
                self.used += nbytes
                return nbytes
            self.waited = True
            granted = threading.Event()
            waiter = [nbytes, granted]
            self.queue.append(waiter)
        while not granted.wait(0.2):
            if self.stop.is_set():
                with self.lock:
                    if not granted.is_set():
                        self.queue.remove(waiter)
                        self._grant()
                        raise Stopped()
        return waiter[0]

    def give(self, room: int) -> None:
        with self.lock:
            self.used -= room
            self._grant()

    def resize(self, limit: int) -> None:
        with self.lock:
            self.limit = limit
            self._grant()

    def _fits(self, nbytes: int) -> bool:
        return not self.used or self.used + nbytes <= self.limit

    def _small(self, nbytes: int) -> bool:
        return nbytes <= self.limit // 16

    def _grant(self) -> None:
        """Give room to waiters in order while it lasts, and to small ones behind a waiter that does not
        fit (called under the lock)."""
        blocked = False
        for waiter in list(self.queue):
            if self.used >= self.limit:
                return                            # full: nobody behind fits either
            nbytes = min(waiter[0], self.limit)
            if (not blocked or self._small(nbytes)) and self._fits(nbytes):
                self.queue.remove(waiter)
                waiter[0] = nbytes
                self.used += nbytes
                waiter[1].set()
            else:
                blocked = True


class FileGate:
    """Files in flight stay under a limit, and the bytes of small files sent in one request under another
    (each is a TCP flow in slow start: on a long link, hundreds of them at once overflow its queues); an
    InFlightWindow may move both. The planner takes a turn before it starts a file, and whoever
    ends the file (its worker, or the lane's answer to a small PUT) gives it back: no worker thread ever
    waits for a turn. `waited`: a file had to wait since it was cleared."""

    def __init__(self, limit: int, stop: threading.Event, bytes_limit: float = math.inf) -> None:
        self.limit = limit
        self.bytes_limit = bytes_limit
        self.stop = stop
        self.used = 0
        self.bytes_used = 0
        self.waited = False
        self.turn = threading.Condition()

    def acquire(self, size: int = 0) -> None:
        """Wait for a turn for a file (size: its bytes, if it goes in one request); raises Stopped once the
        run stops. A file larger than the byte limit goes alone."""
        with self.turn:
            while (self.used >= self.limit or self.stop.is_set() or
                   (self.bytes_used and self.bytes_used + size > self.bytes_limit)):
                if self.stop.is_set():
                    raise Stopped()
                self.waited = True
                self.turn.wait(1.0)
            self.used += 1
            self.bytes_used += size

    def release(self, size: int = 0) -> None:
        with self.turn:
            self.used -= 1
            self.bytes_used -= size
            self.turn.notify_all()      # (a waiting file may need the bytes more than one file frees)

    def resize(self, limit: int, bytes_limit: float = math.inf) -> None:
        with self.turn:
            self.limit = limit
            self.bytes_limit = bytes_limit
            self.turn.notify_all()


class InFlightWindow:
    """Concurrency = auto: the bytes and the files in flight start at what the round trip to the store
    needs (bytes_to_start, files_to_start); both double while a doubling pays (once the rate has settled,
    it sends GAIN times more than before the doubling, like TCP slow start), up to MemoryLimit and
    MaxParallelFile. A step that does not pay is taken back and the window rests, to try again after
    REST seconds; transient errors halve it (down to a quarter of the start).
    A store sharing this machine's cores is faster with little in flight, a long fat link needs a lot,
    and small files on a long link need many files at once. Only seconds in which the window held data
    or files back count, and only once the rate stops climbing at the window it has (connections still
    opening, TCP still in slow start)."""

    START_BYTES = 64 * MiB              # file data in flight at the start when the store is near...
    BYTES_PER_SECOND = 2560 * MiB       # ...and when it is far, as much as this rate needs (Little's law),
    START_BYTES_FAR = 256 * MiB         # up to this (256 MiB at 100 ms)
    START_FILES = 32            # files in flight at the start when the store is near...
    FILES_PER_SECOND = 2560     # ...and when it is far, as many as this rate needs,
    REQUEST_BYTES_PER_SECOND = 160 * MiB    # holding at most this rate's worth of one-request files
    NEAR = 0.01                 # (a round trip below this: no such limit)
    GAIN = 1.15
    REST = 30.0

    def __init__(self, memory: MemoryBudget, ceiling: int, files: FileGate, files_ceiling: int,
                 clock: Callable[[], float] = time.monotonic, round_trip: Optional[float] = None) -> None:
        self.memory = memory
        self.files = files
        self.ceiling = ceiling
        self.files_ceiling = files_ceiling
        self.start_bytes = self.bytes_to_start(round_trip)
        self.start_files = self.files_to_start(round_trip)
        self.start_request_bytes = self.request_bytes_to_start(round_trip)
        self.clock = clock
        self.scale = 1.0                             # the window, in multiples of its start
        self.rate_before: Optional[float] = None     # bytes/s at the window before the last doubling
        self.last_rate = 0.0                         # bytes/s in the second before this one
        self.fresh = True                            # the window just changed: the next second is skipped
        self.resting_until = 0.0
        self._set(1.0, rest=False)
        logger.debug('in flight: %s at the start (round trip %s)', self,
                     'unknown' if round_trip is None else f'{round_trip * 1000:.0f} ms')

    def measured(self, round_trip: Optional[float]) -> None:
        """The round trip, measured once the transfer had started: the start is what it needs, if the window
        has not moved yet."""
        if round_trip is not None and self.scale == 1.0 and self.rate_before is None:
            self.start_bytes = self.bytes_to_start(round_trip)
            self.start_files = self.files_to_start(round_trip)
            self.start_request_bytes = self.request_bytes_to_start(round_trip)
            self._set(1.0, rest=False)

    def tick(self, rate: float, errors: bool) -> None:
        """One measured second: rate is bytes/s moved in it; errors, whether requests had to be retried."""
        limited = self.memory.waited or self.files.waited
        self.memory.waited = self.files.waited = False
        climbing, self.last_rate = rate >= self.GAIN * self.last_rate, rate
        if errors and self.scale > 0.25:
            self._set(self.scale / 2, rest=True)
            logger.debug('in flight: transient errors, window halved to %s', self)
        elif self.fresh:
            self.fresh = False
        elif climbing:
            pass
        elif self.rate_before is not None and rate < self.GAIN * self.rate_before:
            logger.debug('in flight: %s did not pay (%.0f against %.0f MB/s)', self, rate / 1e6,
                         self.rate_before / 1e6)
            self._set(self.scale / 2, rest=True)
        elif not limited or self._full() or self.clock() < self.resting_until:
            self.rate_before = None                  # the last doubling paid (or there was none): it stays
        else:
            self.rate_before = rate
            self._set(self.scale * 2, rest=False)
            logger.debug('in flight: window grows to %s (%.0f MB/s)', self, rate / 1e6)

    @classmethod
    def bytes_to_start(cls, round_trip: Optional[float]) -> int:
        """A long fat link needs much in flight; a store sharing this machine's cores is faster with little."""
        if round_trip is None:
            return cls.START_BYTES_FAR
        return min(cls.START_BYTES_FAR, max(cls.START_BYTES, int(cls.BYTES_PER_SECOND * round_trip)))

    @classmethod
    def files_to_start(cls, round_trip: Optional[float]) -> int:
        """Each small file holds its slot for at least a round trip: a far store needs many at once."""
        return max(cls.START_FILES, int(cls.FILES_PER_SECOND * (round_trip or 0)))

    @classmethod
    def request_bytes_to_start(cls, round_trip: Optional[float]) -> float:
        """Bytes of one-request files in flight at the start: no limit near the store, else what the rate
        needs over the round trip."""
        if round_trip is None or round_trip < cls.NEAR:
            return math.inf
        return cls.REQUEST_BYTES_PER_SECOND * round_trip

    def __str__(self) -> str:
        return f'{human_bytes(self.memory.limit)} in {self.files.limit} files'

    def _full(self) -> bool:
        return self.memory.limit >= self.ceiling and self.files.limit >= self.files_ceiling

    def _set(self, scale: float, rest: bool) -> None:
        self.scale = scale
        self.memory.resize(min(self.ceiling, int(self.start_bytes * scale)))
        self.files.resize(max(1, min(self.files_ceiling, int(self.start_files * scale))),
                          self.start_request_bytes * scale)
        self.fresh = True
        if rest:
            self.rate_before = None
            self.resting_until = self.clock() + self.REST


class Flow:
    """The run's flow control in one object: room in memory, turns for files, the rate limit and (Concurrency =
    auto) the in-flight window that moves the first two."""

    def __init__(self, config: Config, stop: threading.Event, round_trip: Optional[float]) -> None:
        self.limiter = RateLimiter(config.BandwidthLimit * MiB, stop)
        self.memory = MemoryBudget(config.MemoryLimit * MiB, stop)
        self.files = FileGate(config.MaxParallelFile, stop)
        self.window = (InFlightWindow(self.memory, config.MemoryLimit * MiB, self.files, config.MaxParallelFile,
                                      round_trip=round_trip) if config.Concurrency == 'auto' else None)


###############################################################################
# Engine ######################################################################
###############################################################################

EMPTY_MD5 = 'd41d8cd98f00b204e9800998ecf8427e'


SERVER_SIDE_FAILURES = frozenset(('AccessDenied', '403', 'NotImplemented', '501', 'InvalidRequest',
                                  'XNotImplemented', 'CrossLocationLoggingProhibited', 'AuthorizationHeaderMalformed'))


class Progress:
    """Thread-safe counters of a run, read by the progress display, the report and the GUI."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.listing_done = False
        self.files_total = self.files_transferred = self.files_skipped = self.files_failed = 0
        self.files_excluded = self.files_resumed = 0
        self.bytes_total = self.bytes_transferred = self.bytes_resumed = self.bytes_skipped = 0
        self.bytes_copied_server_side = 0
        self.bytes_redone = 0                    # counted as done, then sent again (a file started over)
        self.parts_uploaded = self.parts_resumed = 0
        self.verified_by: Dict[str, int] = {}
        self.failures: List[Dict[str, str]] = []
        self.active: Dict[str, List[int]] = {}   # key -> [bytes done, size]
        self.completing = 0                      # uploads whose bytes are all there, being completed and verified
        self.halted = ''                         # why the run stopped itself (credentials refused mid-run)
        self.source = self.destination = ''      # what the job copies, once checked

    @property
    def finished_all(self) -> bool:
        """Every selected file is accounted for (a stop asked for after that stopped nothing)."""
        return self.listing_done and self.files_done >= self.files_total and not self.halted

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def verified(self, how: str) -> None:
        with self.lock:
            self.files_transferred += 1
            self.verified_by[how] = self.verified_by.get(how, 0) + 1

    def file_started(self, key: str, size: int) -> None:
        with self.lock:
            self.active[key] = [0, size]

    def file_advanced(self, key: str, nbytes: int) -> None:
        with self.lock:
            if key in self.active:
                self.active[key][0] += nbytes

    def file_restarted(self, key: str) -> None:
        """The file starts over: what it had done no longer counts towards the job."""
        with self.lock:
            if key in self.active:
                self.bytes_redone += self.active[key][0]
                self.active[key][0] = 0

    def file_ended(self, key: str) -> None:
        with self.lock:
            self.active.pop(key, None)

    @contextlib.contextmanager
    def completing_upload(self) -> Iterator[None]:
        """An upload whose parts are all there is being completed and verified (shown while the bar is full)."""
        self.add(completing=1)
        try:
            yield
        finally:
            self.add(completing=-1)

    def fail(self, key: str, error: str) -> None:
        with self.lock:
            self.files_failed += 1
            self.failures.append({'key': key, 'error': error})

    @property
    def bytes_done(self) -> int:
        return (self.bytes_transferred + self.bytes_resumed + self.bytes_skipped + self.bytes_copied_server_side
                - self.bytes_redone)

    @property
    def files_done(self) -> int:
        return self.files_transferred + self.files_skipped + self.files_failed

    def snapshot(self) -> Dict[str, Any]:
        with self.lock:
            counts = {name: getattr(self, name) for name in (
                'files_total', 'files_transferred', 'files_skipped', 'files_failed', 'files_excluded', 'files_resumed',
                'bytes_total', 'bytes_transferred', 'bytes_resumed', 'bytes_skipped', 'bytes_copied_server_side',
                'bytes_redone', 'parts_uploaded', 'parts_resumed', 'listing_done')}
            counts['bytes_done'] = self.bytes_done
            counts['active'] = {key: list(done_size) for key, done_size in self.active.items()}
        counts['seconds'] = time.monotonic() - self.started
        return counts


class Switch:
    """A shortcut used until the first sign it cannot work here, then off for the rest of the run."""

    def __init__(self, enabled: bool, shortcut: str, instead: str) -> None:
        self.enabled = enabled
        self.shortcut = shortcut
        self.instead = instead
        self.lock = threading.Lock()

    def disable(self, why: str) -> None:
        with self.lock:
            if self.enabled:
                logger.warning('%s is not possible here (%s): %s', self.shortcut, why, self.instead)
            self.enabled = False


class Shortcuts:
    """What the run has learned about its stores: the shortcuts that work here (each a Switch, off for the rest of
    the run at the first sign it cannot), and whether the destination makes S3's multipart ETags."""

    def __init__(self, destination: Destination, server_side: bool, etags_known: bool) -> None:
        self.destination = destination
        self.server_side = Switch(server_side, 'server-side copy', 'streaming through this machine')
        self.source_md5 = Switch(True, 'taking Content-MD5 from the source ETag', 'hashing the bytes here')
        self.checksum_instead = Switch(destination.checksum_verified, 'letting the destination verify '
                                       f'{destination.checksum and destination.checksum.algorithm} alone',
                                       'sending Content-MD5 too')
        self.multipart_etags_known = etags_known      # AWS S3, or shown earlier in the run: ETags of the parts' MD5s

    def unconfirmed_md5(self, checksum: Optional[bytes], echo: str, data: bytes, etag: str) -> Optional[bytes]:
        """After bytes went under a checksum alone (no Content-MD5): None if the store reported the checksum
        back, else their MD5, which must be the ETag (and Content-MD5 goes along from now on)."""
        algorithm = self.destination.checksum.algorithm if self.destination.checksum else 'checksum'
        if checksum is not None and echo == b64(checksum):
            return None
        self.checksum_instead.disable(f'the store answered without confirming the {algorithm}')
        md5 = md5_of(data)
        if clean_etag(etag) != md5.hex():
            raise RestartFile(f'the store confirmed neither the {algorithm} nor the MD5 of the data')
        return md5


class NotOurs(RestartFile):
    """The object at the destination contradicts the bytes sent (another writer, or a store that lost them)."""




class ObjectProof:
    """Decides what proves that a finished multipart object holds the parts sent, and what shows it does not:
    the store's checksum of it against the parts', the source's own CRC64NVME, the ETag rebuilt from the parts'
    MD5s. An ETag that differs contradicts only where the store is known to make ETags so (etags_known: AWS S3,
    or a store that did so earlier in the run; GCS does not) and its part ETags are MD5s (not with SSE-KMS)."""

    def __init__(self, parts: List[PartDone], size: int, checksum: Optional[Checksum] = None, source_crc: str = '',
                 end_to_end: str = '', etags_known: bool = True) -> None:
        self.size = size
        self.checksum = checksum
        self.pairs = [(part.checksum, part.size) for part in parts]
        self.source_crc = source_crc
        self.end_to_end = end_to_end        # the source's whole-object checksum matched the bytes read: its name
        known = all(part.md5 is not None for part in parts)
        self.expected_etag = multipart_etag([part.md5 for part in parts]) if known and parts else ''  # type: ignore[misc]
        self.md5_etags = etags_known and known and any(part.hashed for part in parts) and all(
            clean_etag(part.etag) == part.md5.hex() for part in parts)  # type: ignore[union-attr]

    def judge(self, etag: str, checksums: Dict[str, str], size: Optional[int] = None) -> str:
        """How an object's ETag, checksums (and size) prove it holds the parts ('' if they cannot tell).
        Raises NotOurs when any of them contradicts the parts."""
        if size is not None and size != self.size:
            raise NotOurs(f'the object there has {size} bytes, the source {self.size}')
        checksum = self.checksum
        reported = checksums.get(checksum.algorithm, '') if checksum else ''
        if checksum and reported and not checksum.matches(reported, self.pairs):  # type: ignore[arg-type]
            raise NotOurs(f'the store reports {checksum.algorithm} {reported} for the object, the parts sent make '
                          f'{checksum.object_value(self.pairs)}')  # type: ignore[arg-type]
        stored_crc = checksums.get('CRC64NVME', '')
        if self.source_crc and stored_crc and stored_crc != self.source_crc:
            raise NotOurs(f'the store reports CRC64NVME {stored_crc}, the source {self.source_crc}')
        etag = clean_etag(etag)
        if self.md5_etags and MULTIPART_ETAG.fullmatch(etag) and etag != self.expected_etag:
            raise NotOurs(f'its ETag {etag} is not {self.expected_etag}, the one of the parts sent')
        if self.source_crc and stored_crc:
            return 'crc64nvme'              # the store's own CRC of what it holds equals the source's
        if reported and checksum:
            return self.end_to_end or checksum.algorithm.lower()
        if self.expected_etag and etag == self.expected_etag:
            return self.end_to_end or 'etag'
        return ''


class FileTransfer:
    """Copies one object: one request when small, else a multipart upload resumed from the destination."""

    MAX_REDO = 3   # source or upload changed mid-copy: start over this many times, then fail

    def __init__(self, engine: 'Engine', task: Task, stop: Optional[threading.Event] = None) -> None:
        self.engine = engine
        self.task = task
        self.stop = stop or engine.stop    # a job of its own can be stopped alone (cluster mode)
        self.source = engine.source
        self.destination = engine.destination
        self.config = engine.config
        self.retry = engine.retrier.call
        self.progress = engine.progress
        self.flow = engine.flow
        self.shortcuts = engine.shortcuts

    def run(self, sent: Optional[Sent] = None) -> Optional[str]:
        """Copy (or find unchanged) the object; return None when it is at the destination, else why not.
        sent: (put, ETag, echo) of a PutObject of it the store accepted, left to prove here.
        Raises Stopped when stopped; the copy stays resumable."""
        task = self.task
        self.progress.file_started(task.key, task.source.size)
        try:
            if task.action == 'check' and self.unchanged():
                self.progress.add(files_skipped=1, bytes_skipped=task.source.size)
                logger.debug('skip %s: unchanged (%s)', task.key, self.config.CompareMode)
                return None
            for attempt in range(self.MAX_REDO + 1):
                try:
                    self.finished(self.stored(*sent) if sent else self._copy())
                    return None
                except AlreadyThere:
                    self.progress.add(files_skipped=1, bytes_skipped=task.source.size)
                    logger.debug('skip %s: the object there is this file (%s)', task.key, self.config.CompareMode)
                    return None
                except RestartFile as change:
                    sent = None
                    if attempt == self.MAX_REDO:
                        raise SourceGone(f'gave up after {self.MAX_REDO} restarts: {change}') from None
                    logger.warning('%s: %s; starting this file again', task.key, change)
                    now = self.source.current(task.source)
                    self.progress.add(bytes_total=now.size - task.source.size)     # it may have grown
                    self.task = task = dataclasses.replace(task, source=now)
                    self.progress.file_restarted(task.key)
                    self.progress.file_started(task.key, task.source.size)
        except Stopped:
            raise
        except Exception as error:  # noqa: BLE001 - one failed file never stops the others
            if self.destination.refuses(error):
                raise Stopped() from None        # the writes are the write check, which refused the job
            code = error_code(error)
            if code in RUN_ENDING_ERROR_CODES:
                what = 'refused the credentials' if code in CREDENTIAL_ERROR_CODES else 'refused the bucket'
                self.engine.halt(f'the store {what} mid-run ({describe_error(error)}): fix that and run the same '
                                 'command again to resume')
                raise Stopped() from None
            message = str(error) if isinstance(error, (SourceGone, VerifyError)) else describe_error(error)
            logger.error('FAILED %s: %s', task.key, message)
            logger.debug('failure detail for %s', task.key, exc_info=True)
            self.progress.fail(task.key, message)
            return message
        finally:
            self.progress.file_ended(task.key)

    def finished(self, how: str) -> None:
        """Count the file as copied, its bytes proven the source's by how."""
        self.progress.verified(how)
        logger.log(logging.INFO if self.task.source.size > self.config.threshold_bytes else logging.DEBUG,
                   'done %s (%s, verified by %s)', self.task.key, human_bytes(self.task.source.size), how)

    def _copy(self) -> str:
        obj = self.task.source
        small = obj.size == 0 or (obj.size <= self.config.threshold_bytes and obj.size <= MAX_PUT_SIZE)
        if self.shortcuts.server_side.enabled:
            try:
                return self._copy_object() if small else MultipartCopy(self, server_side=True).run()
            except ServerSideUnavailable as why:
                self.shortcuts.server_side.disable(str(why))
                self.progress.file_restarted(self.task.key)     # what was copied in the store is sent again
        return self._put() if small else MultipartCopy(self).run()

    def stamp(self, part_size: int) -> Dict[str, str]:
        """The x-amz-meta-s3u-* entries that identify the source version and how it was checked."""
        checksum = self.destination.checksum
        alone = checksum is not None and self.shortcuts.checksum_instead.enabled
        how = ([] if alone else ['md5']) + ([checksum.algorithm.lower()] if checksum else [])
        return {**self.source.stamp(self.task.source), 's3u-etag-part-size': str(part_size),
                's3u-checksum': '+'.join(how)}

    def _put(self) -> str:
        with self.flow.memory.hold(self.flow.memory.whole_file(self.task.source.size)):
            put = self.prepare_put()
            sent = self._put_unless_there(put, self.task.there) if self.task.only_new else None
            etag, echo = sent or self.retry(f'PutObject {self.task.key}', self._store, put)
            return self.stored(put, etag, echo)

    def _put_unless_there(self, put: SmallPut, there: Optional[Future]) -> Optional[Tuple[str, str]]:
        """PutObject sent before the destination answered for the key (there: its HEAD, if one was asked), on
        condition that no object is at the key: (ETag, echo). When one is, or the try fails, the HEAD decides:
        AlreadyThere, or None (sent plainly)."""
        destination = self.destination
        try:
            sent = destination.put(self.task.key, put.data, put.md5, put.args, put.checksum, only_new=True)
        except Exception as error:  # noqa: BLE001 - a plain PutObject, retried, meets any other error again
            self.check_refusal(put, error)
            destination.condition_refused(error)
            self._unless_there(there)
            return None
        destination.condition_taken(self.task.key, sent[0], there)
        return sent

    def _unless_there(self, there: Optional[Future]) -> None:
        """Raise AlreadyThere if the object at the key (its HEAD's answer) is this file, as the planner judges."""
        head = self._head_of(there)
        if (head is not None and head.size == self.task.source.size
                and (self.config.CompareMode == 'size' or self.unchanged())):
            raise AlreadyThere()

    def _head_of(self, there: Optional[Future]) -> Optional[Head]:
        """The key's HEAD: the one in flight (there), else asked now (again, after a transient error)."""
        if there is not None:
            try:
                return there.result()
            except Exception as error:  # noqa: BLE001 - asked again, with the retrier's patience
                if not is_retryable(error):
                    raise
        return self.retry(f'HeadObject {self.task.key}', self.destination.head, self.task.key)

    def prepare_put(self) -> SmallPut:
        """Read the whole file and make what its PutObject sends (waits for the bandwidth limit)."""
        put = self.put_of(*self.retry(f'read {self.task.key}', self.source.fetch, self.task.source))
        self.flow.limiter.take(len(put.data))
        return put

    def put_of(self, data: bytes, info: Info) -> SmallPut:
        """What the PutObject of the file's bytes, as read, sends."""
        destination = self.destination
        if info.whole and info.whole.compute(data) != info.whole.expected:
            raise RestartFile(f'data read does not match the source\'s {info.whole.name}')
        vouched = info.md5 if self.shortcuts.source_md5.enabled else None
        checksum = destination.checksum.of(data) if destination.checksum else None
        by_checksum = vouched is None and checksum is not None and self.shortcuts.checksum_instead.enabled
        md5 = vouched or (None if by_checksum else md5_of(data))
        return SmallPut(data, info, md5, vouched is not None, checksum, destination.object_args(info, self.stamp(0)))

    def stored(self, put: SmallPut, etag: str, echo: str) -> str:
        """Count a PutObject the store accepted and return how its bytes are proven the source's."""
        key = self.task.key
        self.count(put)
        for upload in self.destination.indexed_uploads(key):      # an earlier, larger version's upload
            self.retry(f'AbortMultipartUpload {key}', self.destination.abort, key, upload.upload_id)
            self.engine.journal.forget(upload.upload_id)
        return self.proven(put, etag, echo) or self._size_checked(put, etag)

    def count(self, put: SmallPut) -> None:
        self.progress.add(bytes_transferred=len(put.data), parts_uploaded=1)
        self.progress.file_advanced(self.task.key, len(put.data))

    def proven(self, put: SmallPut, etag: str, echo: str) -> Optional[str]:
        """How the store's answer alone proves the bytes stored are the source's; None if it cannot (raises
        RestartFile if it shows they are not)."""
        md5, info = put.md5, put.info
        if md5 is None:
            md5 = self.shortcuts.unconfirmed_md5(put.checksum, echo, put.data, etag)
            if md5 is None:
                return info.whole.name if info.whole else self.destination.checksum.algorithm.lower()
        if info.whole:
            return info.whole.name          # source CRC matched the bytes, and Content-MD5 the upload
        if clean_etag(etag) == md5.hex():
            return 'source-md5' if put.vouched else 'etag'
        return None

    def _size_checked(self, put: SmallPut, etag: str) -> str:
        """The ETag is no MD5 here: the store accepted Content-MD5, so the object's checksum, else its size
        (when nothing there contradicts the bytes sent), completes the proof."""
        obj, key, checksum = self.task.source, self.task.key, self.destination.checksum
        head = self.retry(f'HeadObject {key}', self.destination.head, key)
        if head is None or head.size != obj.size:
            raise VerifyError(f'destination object has size {head and head.size}, expected {obj.size}')
        reported = head.checksums.get(checksum.algorithm, '') if checksum and put.checksum is not None else ''
        if reported and reported != b64(put.checksum):  # type: ignore[arg-type]
            raise NotOurs(f'the store reports {checksum.algorithm} {reported} for the object, the bytes sent '  # type: ignore[union-attr]
                          f'have {b64(put.checksum)}')  # type: ignore[arg-type]
        if reported:
            return checksum.algorithm.lower()  # type: ignore[union-attr]
        stored = clean_etag(head.etag)
        if put.md5 is not None and head.md5_etag and re.fullmatch('[0-9a-f]{32}', stored):
            if stored != put.md5.hex():
                raise NotOurs(f'the object there has ETag {stored}, the MD5 of the bytes sent is {put.md5.hex()}')
            return 'etag'           # the PutObject's answer was garbled, the object is right
        logger.info('%s: ETag %s is not the MD5 of the data (SSE-KMS or a store with other ETags); '
                    'the server accepted Content-MD5, size checked instead', key, etag)
        return 'size'

    def _store(self, put: SmallPut) -> Tuple[str, str]:
        """PutObject. With the source's MD5 as Content-MD5 (vouched), the destination proves the bytes equal
        the source's without hashing them here; if it refuses them and they are not what the source stated,
        they are read again (and from now on hashed here: the source's ETags may be no MD5s)."""
        try:
            return self.destination.put(self.task.key, put.data, put.md5, put.args, put.checksum)
        except Exception as error:  # noqa: BLE001 - BadDigest sorted out, the rest to the retrier
            self.check_refusal(put, error)
            raise

    def check_refusal(self, put: SmallPut, error: BaseException) -> None:
        """Raises RestartFile if the store refused bytes under the source's MD5 that are not what the source
        stated (and from now on they are hashed here)."""
        if put.vouched and error_code(error) in ('BadDigest', 'InvalidDigest') and md5_of(put.data) != put.md5:
            self.shortcuts.source_md5.disable('the destination refused bytes under the source\'s MD5')
            raise RestartFile('data read does not match the source\'s ETag') from None

    def _copy_object(self) -> str:
        """CopyObject inside the store: no bytes through this machine."""
        obj, key, destination = self.task.source, self.task.key, self.destination
        info = self.retry(f'HeadObject (source) {key}', self.source.info, obj)
        args = destination.object_args(info, self.stamp(0))
        try:
            etag = self.retry(f'CopyObject {key}', destination.copy_object, key, self.source.copy_source(obj),
                              obj.version, args)
        except Exception as error:  # noqa: BLE001
            raise _server_side_error(error) from None
        self.progress.add(bytes_copied_server_side=obj.size, parts_uploaded=1)
        self.progress.file_advanced(key, obj.size)
        head = self.retry(f'HeadObject {key}', destination.head, key)
        if head is None or head.size != obj.size:
            raise VerifyError(f'destination object has size {head and head.size}, expected {obj.size}')
        source_crc, stored_crc = info.stamp.get('s3u-src-crc64nvme'), head.checksums.get('CRC64NVME')
        if source_crc and stored_crc:
            if stored_crc != source_crc:
                raise NotOurs(f'the store reports CRC64NVME {stored_crc} for the copy, the source {source_crc}')
            return 'crc64nvme'
        if '-' not in clean_etag(obj.version) and clean_etag(etag) == clean_etag(obj.version):
            return 'etag'
        return 'size'

    def unchanged(self) -> bool:
        """CompareMode identity / checksum: whether the object already at the destination is this source."""
        obj, key = self.task.source, self.task.key
        head = self.retry(f'HeadObject {key}', self.destination.head, key)
        if head is None or head.size != obj.size:
            return False
        if self.config.CompareMode == 'size':      # (a file found there after a write on condition it was not)
            return True
        if self.config.CompareMode == 'identity':
            stamp = self.source.stamp(obj)
            if all(head.metadata.get(name) == value for name, value in stamp.items()):
                return True
            unstamped = not any(name.startswith('s3u-src-') for name in head.metadata)
            return unstamped and 's3u-src-etag' in stamp and clean_etag(head.etag) == stamp['s3u-src-etag']
        if self.source.reads_locally:
            return self._same_local_content(head)
        info = self.retry(f'HeadObject (source) {key}', self.source.info, obj)
        for name, value in info.stamp.items():
            algorithm = name[len('s3u-src-'):]
            if algorithm.startswith(('crc', 'sha')) and value in (head.metadata.get(name),
                                                                  head.checksums.get(algorithm.upper())):
                return True
        return '-' not in clean_etag(head.etag) and clean_etag(head.etag) == clean_etag(obj.version)

    def _same_local_content(self, head: Head) -> bool:
        """Hash the local file the way the destination's ETag was made and compare."""
        obj, etag = self.task.source, clean_etag(head.etag)
        if not MD5_ETAG.fullmatch(etag):
            return False
        stamped = head.metadata.get('s3u-etag-part-size', '')
        part_size = int(stamped) if stamped.isdigit() else part_size_for(obj.size, self.config.chunk_bytes)
        return rebuilt_etag(self.source.read, obj, etag, part_size) == etag


def _server_side_error(error: BaseException) -> BaseException:
    """Sort an error of CopyObject / UploadPartCopy: source changed or gone, not possible here, or other."""
    if isinstance(error, (RestartFile, SourceGone, Stopped)):
        return error
    code = error_code(error)
    if code in ('PreconditionFailed', '412'):
        return SourceChanged('source object was overwritten during the copy')
    if code in ('NoSuchKey',):
        return SourceGone('source object was deleted')
    if code in SERVER_SIDE_FAILURES:
        return ServerSideUnavailable(describe_error(error))
    return error


@dataclasses.dataclass
class Reuse:
    """What PartReuse decided for one unfinished upload."""
    part_size: int = 0
    kept: Dict[int, Part] = dataclasses.field(default_factory=dict)    # reused as they are
    to_prove: List[Part] = dataclasses.field(default_factory=list)     # reused if their bytes, read again, fit
    discard: str = ''                 # why the upload cannot be this source's (then it is aborted)
    acknowledged: bool = False        # the journal holds the parts the store acknowledged to us
    ours: bool = False                # no journal entry yet: proven parts make it ours from now on


class PartReuse:
    """Decides which listed parts of an unfinished upload this source can keep: those the resume journal shows
    the store acknowledged to us (for this source version), else those whose bytes, read again, have the MD5
    of their ETag (local files, or with ifVerifyMD5); an upload whose parts cannot fit the source is discarded."""

    def __init__(self, obj: SourceObject, planned: int, verify: bool, rereads: bool) -> None:
        self.obj = obj
        self.planned = planned            # the part size this run would use
        self.verify = verify              # ifVerifyMD5: every kept part is read again
        self.rereads = rereads            # reading parts again is cheap (a local source)

    def decide(self, parts: List[Part], entry: Optional[Dict[str, Any]]) -> Reuse:
        trusted = entry is not None and entry.get('identity') == self.obj.identity
        if trusted and 'parts' in entry and not self.verify:  # type: ignore[operator]
            return self._acknowledged(parts, entry)  # type: ignore[arg-type]
        candidates = ([entry['part_size']] if entry else []) + ([max(p.size for p in parts)] if parts else []) + \
            [self.planned]
        part_size = next((size for size in candidates if parts_fit(parts, self.obj.size, size)), None)
        if part_size is None:
            return Reuse(discard='its parts do not fit the current source (size or part size differ)')
        if trusted and not self.verify:       # a journal of version 2.0: no parts recorded, all listed are kept
            return Reuse(part_size, {part.number: part for part in parts})
        if not trusted and not self.rereads and not self.verify:
            return Reuse(discard='no journal entry proves its parts come from this source version (set '
                                 'ifVerifyMD5 = True to check them by re-reading)')
        return Reuse(part_size, to_prove=list(parts), ours=not trusted)

    def _acknowledged(self, parts: List[Part], entry: Dict[str, Any]) -> Reuse:
        """Keep the parts the store acknowledged to us with the ETag it lists now; one listed but never
        acknowledged (a kill cut off its answer) is read again; any other is sent again."""
        part_size = entry['part_size']
        if not parts_fit([], self.obj.size, part_size):
            return Reuse(discard='its part size does not fit the current source')
        acknowledged, checksums = entry['parts'], entry.get('checksums', {})
        fitting = [part for part in parts if parts_fit([part], self.obj.size, part_size)]
        kept = {part.number: dataclasses.replace(part, checksum=part.checksum or checksums.get(part.number, ''))
                for part in fitting if acknowledged.get(part.number) == clean_etag(part.etag)}
        return Reuse(part_size, kept, [part for part in fitting if part.number not in kept], acknowledged=True)


class MultipartCopy:
    """One multipart upload: find what the destination holds, prove it, send the rest, complete, verify."""

    def __init__(self, transfer: FileTransfer, server_side: bool = False) -> None:
        self.transfer = transfer
        self.engine = transfer.engine
        self.obj = transfer.task.source
        self.key = transfer.task.key
        self.destination = transfer.destination
        self.source = transfer.source
        self.retry = transfer.retry
        self.progress = transfer.progress
        self.config = transfer.config
        self.bucket = self.destination.bucket
        self.server_side = server_side
        self.flow = transfer.flow
        self.shortcuts = transfer.shortcuts
        self.whole: Optional[WholeChecksum] = None
        self.discarded: set = set()        # upload ids aborted already

    def run(self) -> str:
        info = self.retry(f'HeadObject (source) {self.key}', self.source.info, self.obj)
        self.whole = None if self.server_side or not (info.whole and info.whole.combine) else info.whole
        planned = part_size_for(self.obj.size, self.config.chunk_bytes)
        upload_id, part_size, kept = self._resume_or_start(planned, info)
        try:
            return self._finish(upload_id, part_size, kept, info)
        except (RestartFile, ServerSideUnavailable) as restart:
            # The next attempt starts an upload of its own: the upload index taken at the start never saw this one.
            self._discard(upload_id, f'the file starts over ({restart})')
            raise
        except Stopped:
            raise                   # left to resume
        except Exception as error:  # noqa: BLE001 - giving up on the file: its upload must not stay behind unknown
            self._give_up(upload_id, error)
            raise

    def _give_up(self, upload_id: str, error: BaseException) -> None:
        """This run gives up on the file: keep its upload when a rerun resumes it (the store was unreachable or
        refused the credentials; the journal holds it), else abort it now, or have the next run abort it."""
        if is_retryable(error) or error_code(error) in RUN_ENDING_ERROR_CODES:
            logger.info('%s: its unfinished upload is kept: run again to resume it', self.key)
            return
        try:
            self._discard(upload_id, f'giving up on the file ({describe_error(error)})')
        except Exception as again:  # noqa: BLE001 - recorded instead: the next run aborts it
            self.engine.journal.abandon(self.bucket, self.key, upload_id)
            logger.warning('%s: cannot abort its unfinished upload now (%s): the next run does', self.key,
                           describe_error(again))

    def _finish(self, upload_id: str, part_size: int, kept: Dict[int, Part], info: Info) -> str:
        """Send the parts the upload lacks, complete it and verify the object."""
        done: Dict[int, PartDone] = {}
        if kept:
            self.progress.add(files_resumed=1)
        for number, part in kept.items():
            checksum = base64.b64decode(part.checksum) if part.checksum else None
            done[number] = PartDone(number, part.size, part.etag, md5_hex_etag(part.etag), checksum)
            self.progress.add(bytes_resumed=part.size, parts_resumed=1)
            self.progress.file_advanced(self.key, part.size)
        count = part_count(self.obj.size, part_size)
        missing = [n for n in range(1, count + 1) if n not in kept]
        if missing:
            logger.info('%s: %s %d of %d parts (%s each)%s', self.key,
                        'copying inside the store' if self.server_side else 'sending', len(missing), count,
                        human_bytes(part_size), f', {len(kept)} already there' if kept else '')
        self._send_parts(upload_id, part_size, missing, done)
        parts = [done[n] for n in sorted(done)]
        if self.source.changed(self.obj):
            raise SourceChanged('source changed during the upload')
        with self.progress.completing_upload():
            try:
                etag, answered, proof = self._complete(upload_id, parts, info)
            except PartsRefused:
                self._send_parts(upload_id, part_size, self._refused(upload_id, done, kept), done)
                parts = [done[n] for n in sorted(done)]
                etag, answered, proof = self._complete(upload_id, parts, info, last_try=True)
            self.engine.journal.forget(upload_id)
            self.destination.forget_upload(self.key, upload_id)
            return self._verify(etag, answered, proof)

    def _send_parts(self, upload_id: str, part_size: int, numbers: List[int], done: Dict[int, PartDone]) -> None:
        """Send (or copy in the store) these parts, MaxThread at once, recording each one acknowledged."""
        send = self._copy_part if self.server_side else self._send_part
        try:
            for part in self.engine.run_parts(send, upload_id, part_size, numbers, self.transfer.stop):
                done[part.number] = part
                self.engine.journal.part_done(upload_id, part.number, part.etag,
                                              b64(part.checksum) if part.checksum else '')
        except SourceGone as gone:
            self._discard(upload_id, f'it can never be completed: {gone}')
            raise
        except Exception as error:  # noqa: BLE001
            if error_code(error) == 'NoSuchUpload':
                self.engine.journal.forget(upload_id)
                raise UploadLost('the destination dropped the multipart upload') from None
            if error_code(error) == 'InvalidRequest' and 'checksum' in describe_error(error).lower():
                # S3 takes parts only under the checksum the upload started with (an earlier run's setting)
                self._discard(upload_id, f'it takes no parts under this checksum ({describe_error(error)})')
                raise UploadLost('the upload was started under another checksum setting') from None
            raise

    def _refused(self, upload_id: str, done: Dict[int, PartDone], kept: Dict[int, Part]) -> List[int]:
        """After Complete refused a part: the parts to send again. Those the store now lists otherwise
        than it acknowledged them, or, when it lists every part as it should, the ones kept from an
        earlier run. Nothing to suspect: the upload is abandoned and the file sent again."""
        try:
            listed = {part.number: part for part in self.retry(f'ListParts {self.key}', self.destination.parts,
                                                               self.key, upload_id)}
        except Exception as error:  # noqa: BLE001
            if error_code(error) != 'NoSuchUpload':
                raise
            self.engine.journal.forget(upload_id)     # the store threw the upload away (rclone serve s3)
            raise UploadLost('the store refused a part and dropped the upload') from None
        differ = [n for n, part in sorted(done.items()) if n not in listed or listed[n].size != part.size
                  or clean_etag(listed[n].etag) != clean_etag(part.etag)]
        suspects = differ or sorted(kept)
        if not suspects:
            self._discard(upload_id, 'the store refused parts that it lists as they were sent')
            raise UploadLost('the store refused the parts of the upload') from None
        logger.warning('%s: the store refused a part at completion; sending %d part(s) again (%s)', self.key,
                       len(suspects), 'listed otherwise than acknowledged' if differ else 'kept from an earlier run')
        for number in suspects:
            self.progress.file_advanced(self.key, -done[number].size)
            self.progress.add(bytes_redone=done[number].size)
        return suspects

    def _resume_or_start(self, planned: int, info: Info) -> Tuple[str, int, Dict[int, Part]]:
        """The upload to continue (with its part size and the parts proven to be ours) or a new one."""
        uploads = self.retry(f'ListMultipartUploads {self.key}', self.destination.uploads_for, self.key)
        usable = [found for found in (self._reusable(upload, planned) for upload in uploads) if found]
        usable.sort(key=lambda found: sum(part.size for part in found[2].values()), reverse=True)
        for upload_id, _, _ in usable[1:]:
            self._discard(upload_id, 'another upload of this key holds more of it')
        if usable:
            return usable[0]
        args = self.destination.object_args(info, self.transfer.stamp(planned))
        upload_id = self.retry(f'CreateMultipartUpload {self.key}', self.destination.create_upload, self.key, args)
        self.engine.journal.record(self.bucket, self.key, upload_id, self.obj.identity, planned)
        return upload_id, planned, {}

    def _discard(self, upload_id: str, why: str) -> None:
        if upload_id in self.discarded:
            return
        logger.info('%s: aborting unfinished upload %s…: %s', self.key, upload_id[:16], why)
        self.retry(f'AbortMultipartUpload {self.key}', self.destination.abort, self.key, upload_id)
        self.engine.journal.forget(upload_id)
        self.discarded.add(upload_id)

    def _reusable(self, upload: Upload, planned: int) -> Optional[Tuple[str, int, Dict[int, Part]]]:
        """(upload id, part size, parts to keep) if the upload can belong to this source, else abort it."""
        try:
            parts = self.retry(f'ListParts {self.key}', self.destination.parts, self.key, upload.upload_id)
        except Exception as error:  # noqa: BLE001
            if error_code(error) == 'NoSuchUpload':
                return None   # finished or aborted since it was listed
            raise
        journal = self.engine.journal
        reuse = PartReuse(self.obj, planned, self.config.ifVerifyMD5, self.source.reads_locally)
        decision = reuse.decide(parts, journal.get(self.bucket, self.key, upload.upload_id))
        if decision.discard:
            self._discard(upload.upload_id, decision.discard)
            return None
        proven = self._proven(decision.to_prove, decision.part_size)
        if decision.ours:
            journal.record(self.bucket, self.key, upload.upload_id, self.obj.identity, decision.part_size)
        if decision.ours or decision.acknowledged:
            for number, part in proven.items():       # proven by re-reading: as good as acknowledged
                journal.part_done(upload.upload_id, number, part.etag, part.checksum)
        kept = {**decision.kept, **proven}
        listed = {part.number for part in parts}        # SeaweedFS lists a part sent twice twice
        if len(kept) < len(listed):
            logger.info('%s: %d of %d listed parts cannot be proven to hold the source as it is now; sending '
                        'them again', self.key, len(listed) - len(kept), len(listed))
        return upload.upload_id, decision.part_size, kept

    def _proven(self, parts: List[Part], part_size: int) -> Dict[int, Part]:
        """The listed parts whose bytes, read again from the source (in parallel), have the MD5 of their ETag;
        each with our checksum of them, which the final verification needs."""
        found = self.engine.part_pool.map(lambda part: self._reread(part, part_size), parts)
        return {part.number: part for part in found if part is not None}

    def _reread(self, part: Part, part_size: int) -> Optional[Part]:
        expected = md5_hex_etag(part.etag)
        offset, length = part_range(part.number, self.obj.size, part_size)
        if expected is None or length != part.size:
            return None
        with self.flow.memory.hold(length):
            data = self._read(part.number, offset, length)
            if md5_of(data) != expected:
                return None
            checksum = self.destination.checksum
            return dataclasses.replace(part, checksum=b64(checksum.of(data)) if checksum else part.checksum)

    def _read(self, number: int, offset: int, length: int) -> bytes:
        return self.retry(f'read {self.key} #{number}', self.source.read, self.obj, offset, length)

    def _send_part(self, upload_id: str, part_size: int, number: int) -> PartDone:
        with self.flow.memory.hold(part_size):
            return self._send_part_in_memory(upload_id, part_size, number)

    def _send_part_in_memory(self, upload_id: str, part_size: int, number: int) -> PartDone:
        offset, length = part_range(number, self.obj.size, part_size)
        data = self._read(number, offset, length)
        checksum = self.destination.checksum.of(data) if self.destination.checksum else None
        md5 = None if checksum is not None and self.shortcuts.checksum_instead.enabled else md5_of(data)
        crc = self.whole.compute(data) if self.whole else None
        self.flow.limiter.take(length)
        etag, echo = self.retry(f'UploadPart {self.key} #{number}', self.destination.upload_part,
                                self.key, upload_id, number, data, md5, checksum)
        if md5 is None:
            md5 = self.shortcuts.unconfirmed_md5(checksum, echo, data, etag)
        self.progress.add(bytes_transferred=length, parts_uploaded=1)
        self.progress.file_advanced(self.key, length)
        return PartDone(number, length, etag, md5, checksum, crc, hashed=md5 is not None)

    def _copy_part(self, upload_id: str, part_size: int, number: int) -> PartDone:
        offset, length = part_range(number, self.obj.size, part_size)
        try:
            etag, checksum = self.retry(f'UploadPartCopy {self.key} #{number}', self.destination.copy_part,
                                        self.key, upload_id, number, self.source.copy_source(self.obj),
                                        self.obj.version, offset, offset + length - 1)
        except Exception as error:  # noqa: BLE001
            raise _server_side_error(error) from None
        if length and clean_etag(etag) == EMPTY_MD5:
            raise ServerSideUnavailable('the store answered UploadPartCopy with an empty part')
        self.progress.add(bytes_copied_server_side=length, parts_uploaded=1)
        self.progress.file_advanced(self.key, length)
        return PartDone(number, length, etag, md5_hex_etag(etag), base64.b64decode(checksum) if checksum else None)

    def _fill_missing_checksums(self, parts: List[PartDone]) -> None:
        """Parts whose additional checksum the store did not report are re-read from the source to get it."""
        if not self.destination.checksum:
            return
        offset = 0
        for part in parts:
            if part.checksum is None:
                part.checksum = self.destination.checksum.of(self._read(part.number, offset, part.size))
            offset += part.size

    def _check_end_to_end(self, parts: List[PartDone]) -> bool:
        """Compare the source's own whole-object CRC with the bytes we read, before completing."""
        if self.whole is None or any(part.crc is None for part in parts):
            return False
        value = self.whole.over([(part.crc, part.size) for part in parts])  # type: ignore[misc]
        if value != self.whole.expected:
            raise RestartFile(f'data read does not match the source\'s {self.whole.name}')
        return True

    def _proof(self, parts: List[PartDone], info: Info) -> ObjectProof:
        """What will prove the object made of these parts (their missing checksums read again first)."""
        self._fill_missing_checksums(parts)
        end_to_end = self._check_end_to_end(parts)
        return ObjectProof(parts, self.obj.size, self.destination.checksum, info.stamp.get('s3u-src-crc64nvme', ''),
                           self.whole.name if end_to_end and self.whole else '', self.shortcuts.multipart_etags_known)

    def _complete(self, upload_id: str, parts: List[PartDone], info: Info,
                  last_try: bool = False) -> Tuple[str, Dict[str, str], ObjectProof]:
        """CompleteMultipartUpload: the object's ETag, the checksums answered, and what proves the object."""
        proof = self._proof(parts, info)
        checksum = self.destination.checksum
        full = checksum.object_value(proof.pairs) if checksum and checksum.full_object else ''  # type: ignore[arg-type]
        try:
            etag, answered = self.retry(f'CompleteMultipartUpload {self.key}', self.destination.complete,
                                        self.key, upload_id, parts, full)
            return etag, answered, proof
        except Exception as error:  # noqa: BLE001
            if error_code(error) in ('InvalidPart', 'InvalidPartOrder'):
                # A part the store listed but will not use: e.g. one overwritten by a request of a killed
                # run that the store finished late (rclone serve s3).
                if not last_try:
                    raise PartsRefused(describe_error(error)) from None
                self._discard(upload_id, f'the store refused a part again ({describe_error(error)})')
                raise UploadLost('the store refused a listed part of the upload') from None
            if error_code(error) != 'NoSuchUpload':
                raise
            return (*self._completed_before(upload_id, proof), proof)

    def _completed_before(self, upload_id: str, proof: ObjectProof) -> Tuple[str, Dict[str, str]]:
        """Complete answered NoSuchUpload: an earlier try of it was applied (its answer lost), or the upload was
        aborted (a lifecycle rule, an operator, another run). Only an object that proves it holds these parts
        is taken; anything else at the key is not ours, and the file is sent again."""
        head = self.retry(f'HeadObject {self.key}', self.destination.head, self.key)
        if head is None:
            raise UploadLost('the destination dropped the multipart upload before completion')
        try:
            how = proof.judge(head.etag, head.checksums, head.size)
        except NotOurs as why:
            raise UploadLost(f'the upload vanished before completion, and the object at the key is another one '
                             f'({why})') from None
        if not how:
            raise UploadLost('the upload vanished before completion, and nothing proves the object at the key '
                             'holds its parts')
        logger.info('%s: upload already completed by an earlier attempt (its %s proves it)', self.key, how)
        return head.etag, head.checksums

    def _verify(self, etag: str, answered: Dict[str, str], proof: ObjectProof) -> str:
        """How the completed object is known to hold the parts: by what CompleteMultipartUpload answered
        (the store's ETag or checksum of the very parts we listed), else by a HEAD; anything that contradicts
        them means the object is not ours (NotOurs: the file is sent again). Only where the store tells
        nothing better (e.g. SSE-KMS ETags, no checksums) is the size all that is checked."""
        self._abort_leftovers()
        how = proof.judge(etag, answered)
        if not (how and (how == 'crc64nvme' or not proof.source_crc)):
            head = self.retry(f'HeadObject {self.key}', self.destination.head, self.key)
            if head is None:
                raise VerifyError('object missing at the destination after CompleteMultipartUpload')
            how = proof.judge(head.etag, head.checksums, head.size) or how or proof.end_to_end or 'size'
        if proof.expected_etag and clean_etag(etag) == proof.expected_etag:
            self.shortcuts.multipart_etags_known = True     # this store makes its ETags of the parts' MD5s
        return how

    def _abort_leftovers(self) -> None:
        """No unfinished upload stays behind for a key that is complete (in rounds: paging may be broken)."""
        for _ in range(100):
            uploads = self.retry(f'ListMultipartUploads {self.key}', self.destination.uploads_for, self.key)
            if not uploads:
                return
            for upload in uploads:
                self._discard(upload.upload_id, 'the object is complete')


class QuickPuts:
    """Small files sent without a thread each: the planner reads a file from a source that reads without
    round trips (a local disk), or starts its GET through the source's awscrt lane (an S3 source), and
    the bytes go to the destination's awscrt lane; that lane's completion callback proves and counts the
    file. A file whose read or answer is not a plain success goes to a worker, to prove or redo."""

    def __init__(self, engine: 'Engine', hand_over: Callable[[Task, Optional[Sent], bool], None]) -> None:
        self.engine = engine
        self.flow = engine.flow
        self.hand_over = hand_over
        self.largest = engine.one_request
        self.reads_locally = engine.source.reads_locally
        self.in_flight = 0
        self.idle = threading.Condition()

    @staticmethod
    def possible(engine: 'Engine') -> bool:
        """A destination lane, and a source that reads locally or without a thread (no bandwidth limit: its
        wait would stall the source lane's thread)."""
        reads_async = type(engine.source).fetch_async is not Source.fetch_async and engine.flow.limiter.rate <= 0
        return engine.destination.lane is not None and (engine.source.reads_locally or reads_async)

    def send(self, task: Task) -> bool:
        """Start the file's PutObject (or the GET before it); False (nothing started) when a worker has to
        copy it."""
        engine, obj = self.engine, task.source
        if (task.action != 'send' or obj.size > self.largest or engine.shortcuts.server_side.enabled
                or engine.destination.indexed_uploads(task.key)):
            return False
        transfer = FileTransfer(engine, task)
        room = engine.flow.memory.take(obj.size)
        engine.progress.file_started(task.key, obj.size)
        with self.idle:
            self.in_flight += 1
        try:
            if self.reads_locally:
                if self._put(transfer, transfer.prepare_put(), room):
                    return True
            elif engine.source.fetch_async(obj, lambda fetched, error: self._fetched(transfer, room, fetched, error)):
                return True
        except Exception as error:  # noqa: BLE001 - the worker meets it again and deals with it
            logger.debug('%s: %s; a worker copies it', task.key, describe_error(error))
        self._ended(task.key, room)
        return False

    def drain(self) -> None:
        """Wait until every file started has its answer (the lanes' deadlines see that they all do)."""
        with self.idle:
            while self.in_flight:
                self.idle.wait()

    def _put(self, transfer: FileTransfer, put: SmallPut, room: int) -> bool:
        return self.engine.destination.put_async(
            transfer.task.key, put.data, put.md5, put.args, put.checksum,
            lambda stored, error: self._answered(transfer, put, room, stored, error), transfer.task.only_new)

    def _fetched(self, transfer: FileTransfer, room: int, fetched: Optional[Tuple[bytes, Info]],
                 error: Optional[BaseException]) -> None:
        """The source's answer, on its lane's thread: the bytes go on to the destination's lane."""
        try:
            if fetched is None:
                raise error or IOError('GetObject: no answer')
            if self._put(transfer, transfer.put_of(*fetched), room):
                return
        except Exception as failure:  # noqa: BLE001 - the worker reads it again, with the retrier's patience
            self._to_worker(transfer.task, room, 'GetObject', failure)
            return
        self._to_worker(transfer.task, room, 'GetObject')      # the destination's lane cannot send this one

    def _answered(self, transfer: FileTransfer, put: SmallPut, room: int, stored: Optional[Tuple[str, str]],
                  error: Optional[BaseException]) -> None:
        """The store's answer, on the lane's thread: a plain success ends the file here."""
        task = transfer.task
        try:
            if stored is None:
                failure = error or MalformedResponse('PutObject: no answer')
                if task.only_new and self._found_there(task, room, failure):
                    return
                transfer.check_refusal(put, failure)
                raise failure
            how = transfer.proven(put, *stored)
            if task.only_new:
                self.engine.destination.condition_taken(task.key, stored[0], task.there)
        except Exception as failure:  # noqa: BLE001 - the worker sends it again, with the retrier's patience
            self._to_worker(task, room, 'PutObject', failure)
            return
        if how is None:
            self._to_worker(task, room, 'PutObject', sent=(put, *stored))      # a worker checks the size with a HEAD
            return
        transfer.count(put)
        transfer.finished(how)
        self._ended(task.key, room, then=lambda: self.flow.files.release(self.engine.request_bytes(task)))

    def _found_there(self, task: Task, room: int, failure: BaseException) -> bool:
        """A write on condition that no object was at its key, refused for one (or for the condition): a
        worker compares the object there with the file, and sends it only if they differ."""
        destination = self.engine.destination
        destination.condition_refused(failure)
        if error_code(failure) not in CONDITION_FAILED and destination.conditional_writes is not False:
            return False
        compare = dataclasses.replace(task, action='check', only_new=False)
        self._ended(task.key, room, then=lambda: self.hand_over(compare, None, False))
        return True

    def _to_worker(self, task: Task, room: int, what: str, failure: Optional[BaseException] = None,
                   sent: Optional[Sent] = None) -> None:
        """A worker takes the file over; after a transient failure, it first waits the retrier's backoff."""
        after_failure = failure is not None and is_retryable(failure)
        if isinstance(failure, RestartFile):
            logger.warning('%s: %s; starting this file again', task.key, failure)
        elif failure is not None:
            if after_failure:
                self.engine.retrier.retries += 1
            logger.log(logging.WARNING if after_failure else logging.DEBUG, '%s %s failed (%s); a worker sends it '
                       'again', what, task.key, describe_error(failure))
        self._ended(task.key, room, then=lambda: self.hand_over(task, sent, after_failure))

    def _ended(self, key: str, room: int, then: Optional[Callable[[], None]] = None) -> None:
        self.flow.memory.give(room)
        self.engine.progress.file_ended(key)
        if then:
            then()
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()


class Engine:
    """Runs the plan: up to MaxParallelFile files at once, MaxThread parts in flight per file, and no
    more file data in memory than MemoryLimit (Concurrency = auto finds how much of both pays)."""

    def __init__(self, config: Config, source: Source, destination: Destination, journal: ResumeJournal,
                 retrier: Retrier, progress: Optional[Progress] = None, filters: Optional[Filters] = None,
                 server_side: bool = False) -> None:
        self.config = config
        self.source = source
        self.destination = destination
        self.journal = journal
        self.retrier = retrier
        self.stop = retrier.stop
        self.progress = progress or Progress()
        self.filters = filters
        self.shortcuts = Shortcuts(destination, server_side, etags_known=config.DesEndPointURL is None)
        self.flow = Flow(config, self.stop, destination.round_trip)
        window, check = self.flow.window, destination.pending_check
        if window and check:        # the check's listing measures the round trip beside the first transfers
            check.add_done_callback(lambda _: window.measured(destination.round_trip))
        self.part_pool = ThreadPoolExecutor(part_workers(config), 'part')
        # a file of up to this goes in one PutObject that can ride the lane (a larger one leaves slow start)
        self.one_request = min(config.threshold_bytes, CrtLane.MAX_BODY)

    def halt(self, why: str) -> None:
        """Stop the whole run, said once: what failed would fail for every file (the work in hand stays resumable)."""
        with self.progress.lock:
            first, self.progress.halted = not self.progress.halted, self.progress.halted or why
        if first:
            logger.error('stopping: %s', why)
        self.stop.set()


    def tasks(self) -> Iterator[Task]:
        index = HeadIndex(self.destination, self.destination.heads) if self.destination.heads_pay else None
        return plan(self.source.objects(), self.destination, self.filters, self.source.match_name,
                    self.config.CompareMode, index)

    def run(self) -> Progress:
        files = ThreadPoolExecutor(self.config.MaxParallelFile, 'file')
        quick = QuickPuts(self, lambda *handed: self._hand_over(files, *handed)) if QuickPuts.possible(self) else None
        finished = threading.Event()
        if self.flow.window:
            threading.Thread(target=self._tune, args=(self.flow.window, finished), name='window', daemon=True).start()
        try:
            for task in self.tasks():
                if not self._count(task):
                    continue
                self.flow.files.acquire(self.request_bytes(task))
                if not (quick and quick.send(task)):
                    self._hand_over(files, task, None)
            self.progress.listing_done = True
        except Stopped:
            pass
        except Exception as error:  # noqa: BLE001 - the files already planned still finish
            if self.destination.check_refused():
                return self.progress            # (the check's line says why)
            logger.error('listing failed: %s; files not yet listed are not copied in this run',
                         describe_error(error))
            logger.debug('listing failure detail', exc_info=True)
            self.progress.fail('(listing)', f'listing failed: {describe_error(error)}')
        finally:
            if quick:
                quick.drain()
            files.shutdown(wait=True)
            self.part_pool.shutdown(wait=True)
            finished.set()
        return self.progress

    def _hand_over(self, files: ThreadPoolExecutor, task: Task, sent: Optional[Sent],
                   after_failure: bool = False) -> None:
        """A worker copies the file (or proves the PutObject of it already sent), then frees its turn;
        after_failure: a try of it just failed, so the worker waits the retrier's first backoff."""
        size = self.request_bytes(task)
        files.submit(self._run_file, task, sent, after_failure).add_done_callback(lambda _: self.flow.files.release(size))

    def request_bytes(self, task: Task) -> int:
        """The file's bytes if it goes in one request (its turn holds them), else 0 (a larger file's parts
        hold memory)."""
        size = task.source.size
        return size if size <= self.one_request else 0

    def _tune(self, window: InFlightWindow, finished: threading.Event) -> None:
        """Once a second, tell the in-flight window how many bytes went out and whether requests failed."""
        moved, retries, then = 0, 0, time.monotonic()
        while not finished.wait(1.0):
            now = time.monotonic()
            moved_now = self.destination.meter.total
            window.tick((moved_now - moved) / (now - then), self.retrier.retries > retries)
            moved, retries, then = moved_now, self.retrier.retries, now

    def dry_run(self, out: Any) -> Progress:
        """Print what a run would send, skip, leave out or fail; change nothing."""
        would_send = 0
        for task in self.tasks():
            if task.action == 'check':
                unchanged = FileTransfer(self, task).unchanged()
                task = dataclasses.replace(task, action='skip' if unchanged else 'send',
                                           reason=f'unchanged ({self.config.CompareMode})' if unchanged else
                                           f'changed ({self.config.CompareMode})')
            if task.action == 'exclude':
                self.progress.add(files_excluded=1)
                print(f'exclude  {task.key}  ({task.reason})', file=out)
                continue
            self.progress.add(files_total=1, bytes_total=task.source.size)
            if task.action == 'send':
                would_send += task.source.size
                print(f'send     {task.key}  {task.source.size}{"  (" + task.reason + ")" if task.reason else ""}',
                      file=out)
            elif task.action == 'skip':
                self.progress.add(files_skipped=1, bytes_skipped=task.source.size)
                print(f'skip     {task.key}  ({task.reason})', file=out)
            else:
                self.progress.fail(task.key, task.reason)
                print(f'fail     {task.key}  ({task.reason})', file=out)
        p = self.progress
        sending = p.files_total - p.files_skipped - p.files_failed
        print(f'dry run: {sending} files to send ({human_bytes(would_send)}), {p.files_skipped} to skip, '
              f'{p.files_excluded} excluded, {p.files_failed} failing; nothing was changed', file=out)
        self.progress.listing_done = True
        self.part_pool.shutdown(wait=True)
        return self.progress

    def _count(self, task: Task) -> bool:
        """Count a planned task; True if it needs a worker."""
        size = task.source.size
        if task.action == 'exclude':
            self.progress.add(files_excluded=1)
            logger.debug('exclude %s: %s', task.key, task.reason)
            return False
        self.progress.add(files_total=1, bytes_total=size)
        if task.action == 'skip':
            self.progress.add(files_skipped=1, bytes_skipped=size)
            logger.debug('skip %s: %s', task.key, task.reason)
            return False
        if task.action == 'fail':
            logger.error('FAILED %s: %s', task.key, task.reason)
            self.progress.fail(task.key, task.reason)
            return False
        return True

    def _run_file(self, task: Task, sent: Optional[Sent] = None, after_failure: bool = False) -> None:
        if self.stop.is_set():
            return
        try:
            if after_failure:
                self.retrier.sleep(self.retrier.delay(1))
            FileTransfer(self, task).run(sent)
        except Stopped:
            pass

    def run_parts(self, send: Callable[[str, int, int], PartDone], upload_id: str, part_size: int,
                  numbers: List[int], stop: Optional[threading.Event] = None) -> Iterator[PartDone]:
        """Send parts with at most MaxThread in flight; yield each as it finishes; no new ones once stopped."""
        stop = stop or self.stop
        queue = list(reversed(numbers))
        pending: set = set()
        error: Optional[BaseException] = None
        while queue or pending:
            while (queue and len(pending) < self.config.MaxThread and error is None and not stop.is_set()
                   and not self.stop.is_set()):
                pending.add(self.part_pool.submit(send, upload_id, part_size, queue.pop()))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    part = future.result()
                except BaseException as failure:  # noqa: BLE001 - let in-flight parts finish, then raise
                    error = error or failure
                    continue
                yield part      # outside the try: a caller that stops iterating ends this generator
        if error is not None:
            raise error
        if queue:
            raise Stopped()


def part_workers(config: Config) -> int:
    """Threads sending parts: as many as parts may be in flight, and as MemoryLimit has room for."""
    return max(config.MaxThread, min(config.MaxParallelFile * config.MaxThread,
                                     config.MemoryLimit // config.ChunkSize))


###############################################################################
# Check #######################################################################
###############################################################################

VERDICTS = ('same', 'different', 'missing', 'extra', 'unknown')
Listed = Tuple[int, str]                # a destination object as listed: (size, ETag)


def side_by_side(source_objects: Iterable[SourceObject], destination: Destination
                 ) -> Iterator[Tuple[str, Optional[SourceObject], Optional[Listed]]]:
    """(relative key, source object or None, destination (size, ETag) or None) for every key of either
    listing, both streamed in key order (constant memory); ConfigError if a listing is not in key order."""
    listing = destination.objects()
    there = next(listing, None)
    last = ''
    for obj in source_objects:
        if obj.key < last:
            raise ConfigError(f'the source listing is not in key order ({obj.key!r} after {last!r}): '
                              '--check needs sorted listings')
        last = obj.key
        while there is not None and there[0] < obj.key:
            yield there[0], None, (there[1], there[2])
            there = _next_in_order(listing, there[0])
        if there is not None and there[0] == obj.key:
            yield obj.key, obj, (there[1], there[2])
            there = _next_in_order(listing, there[0])
        else:
            yield obj.key, obj, None
    while there is not None:
        yield there[0], None, (there[1], there[2])
        there = _next_in_order(listing, there[0])


def _next_in_order(listing: Iterator[Tuple[str, int, str]], after: str) -> Optional[Tuple[str, int, str]]:
    item = next(listing, None)
    if item is not None and item[0] <= after:
        raise ConfigError(f'the destination listing is not in key order ({item[0]!r} after {after!r}): '
                          '--check needs sorted listings')
    return item


class Comparison:
    """--check: proves, without downloading the destination, which keys are the same on both sides. Each key
    pair is judged by the strongest proof at hand: the store's full-object CRC64NVME against the source's
    (computed here for a local file, or the S3 source's own), the ETag against the MD5s of the source's bytes
    (rebuilt with the part size stamped at upload), the source stamp; else only the size is compared."""

    WORKERS = 16
    CHUNK = 8 * MiB

    def __init__(self, config: Config, source: Source, destination: Destination, filters: Optional[Filters],
                 retrier: Retrier, out: Any) -> None:
        self.config = config
        self.source = source
        self.destination = destination
        self.filters = filters
        self.retry = retrier.call
        self.out = out
        self.counts: Dict[str, int] = dict.fromkeys(VERDICTS, 0)
        self.proofs: Dict[str, int] = {}
        self.reads_locally = source.reads_locally
        self.crc = _awscrt_checksums('CRC64NVME') if Checksum.available() else None
        self.etags_known = config.DesEndPointURL is None    # AWS S3 makes multipart ETags of the parts' MD5s

    def run(self, records: Any) -> Dict[str, Any]:
        """Judge every key, print a line each, write them to records (JSON lines); the tally."""
        single = self.source.single
        pending: collections.deque = collections.deque()
        with ThreadPoolExecutor(self.WORKERS, 'check') as pool:
            for key, obj, there in side_by_side(self.source.objects(), self.destination):
                if obj is None and (single and key != single or self.filters and self.filters.excluded(key, '')):
                    continue
                if obj is not None and self.filters and self.filters.excluded(obj.key, self.source.match_name(obj)):
                    continue
                pending.append(pool.submit(self._judged, key, obj, there))
                while pending and (pending[0].done() or len(pending) > 4 * self.WORKERS):
                    self._tell(pending.popleft().result(), records)
            while pending:
                self._tell(pending.popleft().result(), records)
        return {'counts': dict(self.counts), 'proofs': dict(self.proofs)}

    def _tell(self, judged: Tuple[str, str, str], records: Any) -> None:
        key, verdict, how = judged
        self.counts[verdict] += 1
        if verdict == 'same':
            self.proofs[how] = self.proofs.get(how, 0) + 1
        print(f'{verdict:<9}  {key}' + (f'  ({how})' if how else ''), file=self.out)
        records.write(json.dumps({'key': key, 'verdict': verdict, 'how': how}, ensure_ascii=False) + '\n')

    def _judged(self, key: str, obj: Optional[SourceObject], there: Optional[Listed]) -> Tuple[str, str, str]:
        if obj is None:
            return key, 'extra', ''
        if there is None:
            return key, 'missing', ''
        if obj.problem:
            return key, 'unknown', obj.problem
        if there[0] != obj.size:
            return key, 'different', f'size: {obj.size} at the source, {there[0]} at the destination'
        try:
            return (key, *self.judge(obj, self.destination.key_for(obj.key)))
        except Stopped:
            raise
        except Exception as error:  # noqa: BLE001 - one key that cannot be judged does not stop the others
            return key, 'unknown', str(error) if isinstance(error, (SourceGone, RestartFile)) else describe_error(error)

    def judge(self, obj: SourceObject, key: str) -> Tuple[str, str]:
        """(verdict, how) of a source object and the destination object of the same size at key."""
        head = self.retry(f'HeadObject {key}', self.destination.head, key)
        if head is None:
            return 'missing', 'deleted since it was listed'
        if head.size != obj.size:
            return 'different', f'size: {obj.size} at the source, {head.size} at the destination'
        info = None if self.reads_locally else self.retry(f'HeadObject (source) {key}', self.source.info, obj)
        return self._by_crc(obj, head, info) or self._by_etag(obj, head, info) or self._by_stamp(obj, head) or \
            ('same', 'size')

    def _by_crc(self, obj: SourceObject, head: Head, info: Optional[Info]) -> Optional[Tuple[str, str]]:
        stored = head.checksums.get('CRC64NVME', '')
        if not stored or '-' in stored:
            return None
        if info is not None:
            whole = info.whole
            if whole is None or whole.name != 'crc64nvme':
                return None
            ours = b64(whole.expected.to_bytes(8, 'big'))
        elif self.crc is not None:
            value = 0
            for offset in range(0, obj.size, self.CHUNK):
                value = self.crc.crc64nvme(self._read(obj, offset, min(self.CHUNK, obj.size - offset)), value)
            ours = b64(value.to_bytes(8, 'big'))
        else:
            return None
        return ('same' if ours == stored else 'different'), 'crc64nvme'

    def _by_etag(self, obj: SourceObject, head: Head, info: Optional[Info]) -> Optional[Tuple[str, str]]:
        etag = clean_etag(head.etag)
        if info is not None:
            if etag == clean_etag(obj.version):
                return 'same', 'etag'
            if info.md5 is not None and head.md5_etag and '-' not in etag:
                return ('same' if info.md5.hex() == etag else 'different'), 'md5'
            return None
        if not head.md5_etag or not MD5_ETAG.fullmatch(etag):
            return None
        stamped = head.metadata.get('s3u-etag-part-size', '')
        part_size = int(stamped) if stamped.isdigit() else part_size_for(obj.size, self.config.chunk_bytes)
        computed = rebuilt_etag(self._read, obj, etag, part_size, self.CHUNK)
        if '-' not in etag:
            return ('same' if computed == etag else 'different'), 'md5'
        if not computed:
            return None
        if computed == etag:
            self.etags_known = True
            return 'same', 'etag'
        # Only a store known to make S3's ETags, and the part size stamped at upload, make a mismatch a proof.
        return ('different', 'etag') if stamped and self.etags_known else None

    def _by_stamp(self, obj: SourceObject, head: Head) -> Optional[Tuple[str, str]]:
        stamp = self.source.stamp(obj)
        if not any(name in head.metadata for name in stamp):
            return None
        same = all(head.metadata.get(name) == value for name, value in stamp.items())
        return ('same' if same else 'different'), 'stamp'

    def _read(self, obj: SourceObject, offset: int, length: int) -> bytes:
        return self.retry(f'read {obj.key}', self.source.read, obj, offset, length)


###############################################################################
# Report ######################################################################
###############################################################################

@dataclasses.dataclass
class Report:
    """What a run did, as written by --report (JSON) and summarised at the end."""
    files_total: int
    files_transferred: int
    files_skipped: int
    files_failed: int
    bytes_total: int
    bytes_transferred: int
    bytes_resumed: int
    parts_uploaded: int
    parts_resumed: int
    seconds: float
    failures: List[Dict[str, str]]
    bytes_copied_server_side: int = 0
    files_excluded: int = 0
    verified_by: Dict[str, int] = dataclasses.field(default_factory=dict)
    stopped: bool = False
    dry_run: bool = False
    source: str = ''
    destination: str = ''
    halted: str = ''              # why the run stopped itself (e.g. credentials refused mid-run)
    check: Dict[str, Any] = dataclasses.field(default_factory=dict)    # --check: counts per verdict and proof
    keys: Any = dataclasses.field(default=None, repr=False, compare=False)  # --check: a file of a JSON line per key

    @classmethod
    def from_progress(cls, progress: Progress, stop_asked: bool, dry_run: bool = False) -> 'Report':
        """The report of a run; stop_asked: a stop was asked for (it counts only if it left files undone)."""
        with progress.lock:
            stopped = bool(progress.halted) or (stop_asked and not progress.finished_all)
            return cls(progress.files_total, progress.files_transferred, progress.files_skipped,
                       progress.files_failed, progress.bytes_total, progress.bytes_transferred,
                       progress.bytes_resumed, progress.parts_uploaded, progress.parts_resumed,
                       round(time.monotonic() - progress.started, 3), list(progress.failures),
                       progress.bytes_copied_server_side, progress.files_excluded, dict(progress.verified_by),
                       stopped, dry_run, progress.source, progress.destination, progress.halted)

    @property
    def exit_code(self) -> int:
        if self.check:
            counts = self.check['counts']
            return EXIT_FAILED if counts['missing'] or counts['different'] or counts['unknown'] else EXIT_OK
        return EXIT_FAILED if self.files_failed or self.halted else EXIT_OK

    def write(self, path: str) -> None:
        """The report as JSON; with --check, each key's verdict too (streamed from the keys file)."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != 'keys'}
        text = json.dumps(data, indent=2, ensure_ascii=False)
        temporary = path + '.tmp'
        with open(temporary, 'w', encoding='utf-8') as handle:
            if self.keys is None:
                handle.write(text + '\n')
            else:
                handle.write(text[:-len('\n}')] + ',\n  "keys": [')
                self.keys.seek(0)
                for number, line in enumerate(self.keys):
                    handle.write((',\n    ' if number else '\n    ') + line.rstrip('\n'))
                handle.write('\n  ]\n}\n')
        os.replace(temporary, path)

    def check_summary(self) -> str:
        counts, proofs = self.check['counts'], self.check['proofs']
        lines = [f'CHECKED in {self.seconds:.1f}s: ' + ', '.join(f'{counts[v]} {v}' for v in VERDICTS) +
                 f' ({self.source} -> {self.destination})']
        if proofs:
            lines.append('same, proven by ' + ', '.join(f'{how}: {n}' for how, n in sorted(proofs.items())
                                                        if how != 'size'))
        if proofs.get('size'):
            lines.append(f'{proofs["size"]} key(s) where the stores give nothing better than the size to compare')
        lines.append('every key is at the destination and the same' if self.exit_code == EXIT_OK else
                     'NOT the same: see the "different", "missing" and "unknown" lines above')
        return '\n'.join(lines)

    def summary(self) -> str:
        if self.check:
            return self.check_summary()
        rate = self.bytes_transferred / self.seconds if self.seconds > 0 else 0
        lines = [
            f'{"STOPPED" if self.stopped else "DONE"} in {self.seconds:.1f}s: '
            f'{self.files_transferred} transferred, {self.files_skipped} skipped, {self.files_failed} failed '
            f'of {self.files_total} files',
            f'sent {human_bytes(self.bytes_transferred)} ({human_bytes(rate)}/s), reused '
            f'{human_bytes(self.bytes_resumed)} already uploaded ({self.parts_resumed} parts), '
            f'{human_bytes(self.bytes_total)} selected',
        ]
        if self.bytes_copied_server_side:
            lines.append(f'copied {human_bytes(self.bytes_copied_server_side)} inside the store (server-side copy)')
        if self.verified_by:
            lines.append('verified by ' + ', '.join(f'{how}: {count}' for how, count in sorted(self.verified_by.items())))
        for failure in self.failures[:20]:
            lines.append(f'  failed: {failure["key"]}: {failure["error"]}')
        if len(self.failures) > 20:
            lines.append(f'  ... and {len(self.failures) - 20} more (see --report / the log)')
        if self.halted:
            lines.append(f'stopped: {self.halted}')
        if self.stopped:
            lines.append('run the same command again to resume')
        return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class Reading:
    """What a progress display shows, computed once for the command line and the window alike."""
    fraction: float             # of the selected bytes, 0..1 (never past 1)
    done: int
    total: int
    rate: float                 # bytes/s over the last seconds, sent and copied inside the store alike
    eta: str
    files: str                  # 'done/total' ('+' while the listing goes on)
    active: Dict[str, List[int]]
    completing: int
    skipped: int
    failed: int
    transferred: int

    def doing(self) -> str:
        """The rate and ETA, or what the run waits for once every byte is there."""
        if self.done >= self.total and self.completing:
            return f'completing {self.completing} upload{"s" if self.completing > 1 else ""}'
        return f'{human_bytes(self.rate)}/s ETA {self.eta}'


class RateMeter:
    """Reads a run's Progress: the share done, and the rate and ETA over the last WINDOW seconds."""

    WINDOW = 10.0

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.samples: List[Tuple[float, int]] = []

    def read(self) -> Reading:
        p = self.progress.snapshot()
        now = time.monotonic()
        moved = p['bytes_transferred'] + p['bytes_copied_server_side']
        self.samples = [s for s in self.samples if now - s[0] < self.WINDOW] + [(now, moved)]
        elapsed = now - self.samples[0][0]
        rate = (self.samples[-1][1] - self.samples[0][1]) / elapsed if elapsed > 0 else 0.0
        total = p['bytes_total']
        done = min(max(p['bytes_done'], 0), total)
        fraction = done / total if total else (1.0 if p['listing_done'] else 0.0)
        eta = time.strftime('%H:%M:%S', time.gmtime((total - done) / rate)) \
            if rate > 0 and p['listing_done'] else '--:--:--'
        files_done = p['files_transferred'] + p['files_skipped'] + p['files_failed']
        files = f'{files_done}/{p["files_total"]}' + ('' if p['listing_done'] else '+')
        return Reading(fraction, done, total, rate, eta, files, p['active'], self.progress.completing,
                       p['files_skipped'], p['files_failed'], p['files_transferred'])


class ProgressDisplay:
    """A live bar on a terminal, else a log line every few seconds."""

    def __init__(self, progress: Progress, stream: Any = None, interval: Optional[float] = None,
                 after: Optional[Future] = None) -> None:
        self.progress = progress
        self.after = after          # shown once this (the job's check) has passed
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.interval = interval or (0.5 if self.tty else 5.0)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name='progress', daemon=True)
        self.meter = RateMeter(progress)

    def __enter__(self) -> 'ProgressDisplay':
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join()
        if self.tty:
            ConsoleHandler.clear_line(self.stream)

    def _loop(self) -> None:
        while not self.done.wait(self.interval):
            if self.after is not None and not (self.after.done() and self.after.exception() is None):
                continue
            line = self.line()
            if self.tty:
                ConsoleHandler.show_status(self.stream, line)
            else:
                logger.info('progress: %s', line)

    def line(self) -> str:
        r = self.meter.read()
        return (f'[{"#" * int(r.fraction * 20):<20}] {r.fraction * 100:5.1f}% {human_bytes(r.done)}/{human_bytes(r.total)} '
                f'{r.doing()} files {r.files} (skipped {r.skipped}, failed {r.failed})')


###############################################################################
# Job #########################################################################
###############################################################################

def server_side_possible(config: Config, source_client: Any, destination_client: Any) -> bool:
    """S3_TO_S3 may copy inside the store: allowed, one endpoint, one partition (auto falls back if denied)."""
    return (config.ServerSideCopy == 'auto' and config.SrcEndPointURL == config.DesEndPointURL and
            source_client.meta.partition == destination_client.meta.partition)


# A job of at most this many files and bytes, none multipart, has no write check: its first writes are the check
# (sent with Content-MD5); with at most HEAD_FILES, their keys are asked by HEAD beside the listing.
SMALL_JOB_FILES, SMALL_JOB_BYTES, HEAD_FILES = 2000, 256 * MiB, 32


def open_job(config: Config, retrier: Retrier, write_check: bool = True,
             facts: Optional[StoreFacts] = None) -> Tuple[Source, Destination, bool]:
    """Source and destination of a job, checked (the write check: from what an earlier run learned of the
    destination, beside the first transfers of a small job, else before anything is transferred), and
    whether the source can be copied server-side (same endpoint and partition)."""
    pool = config.MaxParallelFile + part_workers(config) + 4
    small = few = False
    if config.JobType == 'LOCAL_TO_S3':       # known without a request: a small job needs no upload index, and
        source: Source = LocalSource(config.SrcDir, config.SrcFileIndex)     # a few files no CRT lane, but HEADs
        source.check()
        small = write_check and source.small_job(SMALL_JOB_FILES, config.threshold_bytes, SMALL_JOB_BYTES)
        few = small and source.small_job(HEAD_FILES, config.threshold_bytes, SMALL_JOB_BYTES)
    des_client = client_for(config, 'Des', pool, lane=not few)
    destination = Destination(des_client, config.DesBucket, config.S3Prefix, WriteOptions.from_config(config),
                              config.ListPageSize, retrier)
    server_side = False
    if config.JobType == 'LOCAL_TO_S3':
        if few:
            destination.ask_heads([obj.key for obj in source.objects()])
    elif config.JobType == 'S3_TO_S3':
        src_client = client_for(config, 'Src', pool, loader=des_client.data_loader)
        source = S3Source(src_client, config.SrcBucket, config.SrcPrefix, config.SrcFileIndex, config.ListPageSize,
                          retrier, config.RequestPayer == 'requester', config.CopyTags, config.CopyMetadata)
        server_side = server_side_possible(config, src_client, des_client)
    else:
        source = OssSource.from_config(config, retrier)
    listing = in_background(destination.check_listing, write_check)     # both ends at once: they only read
    if not source.reads_locally:
        source.check()              # a source error is reported first, without waiting for the destination
    known = facts.known(destination, not server_side) if facts and write_check else None
    if facts:
        facts.recall_store(destination)
    # A short job's first writes go beside the check if they cannot create a bucket its listing would find
    # missing, and need not be named as the store names them (a storage class: learnt from the listing's answer)
    if small and destination.creates_buckets is False and destination.options.storage_class == 'STANDARD':
        if known:
            destination.trust(known)
        destination.check_beside(listing, retrier.stop.set)         # the first writes go beside the check
        retrier.refused = destination.check_refused
        return source, destination, server_side
    listing.result()
    if not write_check:
        return source, destination, server_side
    if known:
        destination.trust(known)
    elif small:
        destination.write_unchecked(retrier.stop.set)
    else:
        destination.check_write(probe_checksum=not server_side)
    return source, destination, server_side


def abort_left_behind(journal: ResumeJournal, destination: Destination, source: Source, retrier: Retrier) -> None:
    """Abort the uploads earlier runs gave up on, or whose source file is gone: no run would meet them again."""
    for entry in journal.left_behind(destination.bucket, destination.prefix, source.vanished):
        key, upload_id = entry['key'], entry['upload_id']
        try:
            retrier.call(f'AbortMultipartUpload {key}', destination.abort, key, upload_id)
        except Stopped:
            raise
        except Exception as error:  # noqa: BLE001 - tried again by the next run
            logger.warning('%s: cannot abort the unfinished upload an earlier run left (%s)', key,
                           describe_error(error))
            continue
        journal.forget(upload_id)
        logger.info('%s: aborted the unfinished upload an earlier run left (%s)', key,
                    'given up on' if entry.get('abandoned') else 'its source file is gone')


def offer_clean(config: Config, destination: Destination, source: Source) -> None:
    """DontAskMeToClean = False: on a terminal, offer to abort this job's unfinished uploads."""
    if config.DontAskMeToClean or not sys.stdin.isatty():
        return
    single = source.single
    prefix = destination.key_for(single) if single else destination.prefix
    destination.finish_check()
    uploads = [u for u in destination.uploads(prefix) if not single or u.key == prefix]
    if not uploads:
        return
    print(f'{len(uploads)} unfinished upload(s) of this job under {destination.describe()}.', file=sys.stderr)
    answer = input('Type CLEAN to abort them and start those files over, or press Enter to resume: ')
    if answer.strip() == 'CLEAN':
        for upload in uploads:
            destination.abort(upload.key, upload.upload_id)
        print(f'aborted {len(uploads)} unfinished upload(s)', file=sys.stderr)


def run_job(config: Config, stop: Optional[threading.Event] = None, progress: Optional[Progress] = None,
            show_progress: bool = False, ask: bool = False, rules: Iterable[Tuple[str, str]] = (),
            dry_run: bool = False, accepted: Callable[[], None] = lambda: None, check: bool = False) -> Report:
    """Check, plan and run a job (or only print its plan, or with check only compare both sides); return its
    report. ConfigError on bad input; accepted() is called once the checks passed, before anything is sent."""
    retrier = Retrier(config.MaxRetry, stop or threading.Event())
    filters = Filters.from_config(config, rules)
    facts = StoreFacts(os.path.join(config.LogDir, 's3_upload-stores.json'))
    source, destination, server_side = open_job(config, retrier, not dry_run and not check, facts)
    progress = progress or Progress()
    progress.source, progress.destination = source.describe(), destination.describe()
    if check:
        accepted()
        return compare_job(config, source, destination, filters, retrier, progress)
    beside = destination.unchecked is not None  # a short job's writes are its write check: the run is accepted
    try:                                        # (log file, start line) once they passed it
        if not beside:
            accepted()
        if ask and not dry_run:
            offer_clean(config, destination, source)
        if not beside:          # (beside: a small job writes no journal; LogDir is made once it is accepted)
            _make_log_dir(config)
        journal = ResumeJournal(os.path.join(config.LogDir, 's3_upload-journal.jsonl'))
        if not dry_run:
            abort_left_behind(journal, destination, source, retrier)
        engine = Engine(config, source, destination, journal, retrier, progress, filters, server_side)
        start_line = ('s3_upload %s: %s %s -> %s (parts of %d MiB, %s%d files x %d parts in flight%s)', __version__,
                      config.JobType, source.describe(), destination.describe(), config.ChunkSize,
                      'up to ' if engine.flow.window else '', config.MaxParallelFile, config.MaxThread,
                      ', server-side copy' if server_side else '')
        if not beside:
            logger.info(*start_line)
        gc.freeze()     # modules and botocore's service models live as long as the run: the collector skips them
        if dry_run:
            engine.dry_run(sys.stdout)
        elif show_progress:
            with ProgressDisplay(engine.progress, after=destination.pending_check):
                engine.run()
        else:
            engine.run()
    finally:
        gc.unfreeze()   # (nothing to do if the run failed before the freeze)
        try:
            destination.finish_check()
        except ConfigError as refused:
            raise _written_before(refused, progress) from None
    if beside:
        _make_log_dir(config)
        accepted()
        logger.info(*start_line)
    report = Report.from_progress(engine.progress, engine.stop.is_set(), dry_run)
    destination.judge_conditions()
    models = getattr(destination.client, 'model_cache', None)
    if models is not None:
        models.save()
    probe_checksum = not server_side
    if destination.trusted and _writes_refused(report):
        facts.forget(destination, probe_checksum)      # contradicted: the next run checks again
        raise _written_before(ConfigError(f'the destination {destination.describe()} refuses our writes now (it '
                                          'took them before): check the credentials\' s3:PutObject permission '
                                          'and the bucket policy'), progress)
    facts.learn(destination, probe_checksum)
    return report


def _make_log_dir(config: Config) -> None:
    try:
        os.makedirs(config.LogDir, exist_ok=True)
    except OSError as error:
        raise ConfigError(f'cannot create LogDir {config.LogDir}: {error.strerror}: fix LogDir') from None


def _writes_refused(report: Report) -> bool:
    """Every failure of the run is a refused write: the destination no longer takes ours."""
    return bool(report.failures) and all('AccessDenied' in failure['error'] or '403' in failure['error']
                                         for failure in report.failures)


def _written_before(refusal: ConfigError, progress: Progress) -> ConfigError:
    """A refusal that came when the first transfers had gone: say what they left (valid copies)."""
    written = progress.files_transferred
    return ConfigError(f'{refusal}' + (f' ({written} file(s) written before the refusal are complete, verified '
                                       'copies)' if written else ''))


def compare_job(config: Config, source: Source, destination: Destination, filters: Filters, retrier: Retrier,
                progress: Progress) -> Report:
    """--check: every key of both sides judged and printed on stdout; the report holds each verdict too."""
    import tempfile
    keys = tempfile.TemporaryFile('w+', encoding='utf-8')
    tally = Comparison(config, source, destination, filters, retrier, sys.stdout).run(keys)
    progress.listing_done = True
    report = Report.from_progress(progress, False)
    report.check, report.keys = tally, keys
    return report


###############################################################################
# CLI #########################################################################
###############################################################################

def default_config_path() -> str:
    """s3_upload_config.ini beside the script (or beside the packaged executable)."""
    here = os.path.dirname(sys.executable if getattr(sys, 'frozen', False) else os.path.abspath(__file__))
    return os.path.join(here, 's3_upload_config.ini')


def build_parser() -> argparse.ArgumentParser:
    width = max(60, min(shutil.get_terminal_size().columns, 120) - 2)

    def fill(text: str, indent: str = '', hang: str = '    ') -> str:
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent + hang)
    keys = '\n'.join(fill(f'[{o.section}] {o.name} (default {o.default!r}): {o.help}', '  ') for o in OPTIONS)
    parser = argparse.ArgumentParser(
        prog='s3_upload.py', formatter_class=argparse.RawDescriptionHelpFormatter,
        description=fill('Multi-threaded, resumable migration of a local folder or an S3 bucket/prefix into '
                         'Amazon S3 or any S3-compatible store. Kill it at any time and run it again to resume.', hang=''),
        epilog='\n'.join((
            'config keys (ini; case-insensitive; override any with --set KEY=VALUE):', keys, '',
            fill('exit codes: 0 all files verified, 1 some files failed, 2 bad input/configuration, 130/143 '
                 'stopped by Ctrl-C/SIGTERM (resumable)'),
            fill('credentials: the normal boto3 chain (profiles, environment, instance roles)'),
            fill('environment: S3UPLOAD_<Key> overrides the ini (e.g. S3UPLOAD_DesBucket); --set overrides both'),
            fill('a worker fleet: s3_upload_cluster.py jobsender|worker|status --config PATH (see its --help)'))))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--nogui', action='store_true', help='run headless (default except on Windows)')
    mode.add_argument('--gui', action='store_true', help='open the Tkinter front end')
    mode.add_argument('--demo', action='store_true',
                      help='upload sample files to a local S3 endpoint (needs moto: pip install "moto[server]")')
    parser.add_argument('--config', metavar='PATH', help='ini file (default: s3_upload_config.ini beside the '
                                                         'script)')
    parser.add_argument('--report', metavar='PATH', help='write a JSON summary of the run here')
    parser.add_argument('--set', metavar='KEY=VALUE', action='append', default=[],
                        help='override one config key, e.g. --set MaxThread=10 (repeatable)')
    parser.add_argument('--dry-run', action='store_true',
                        help='print what would be sent, skipped, excluded or fail, with totals; change nothing')
    parser.add_argument('--check', action='store_true',
                        help='transfer nothing: compare source and destination key by key (same, different, '
                             'missing, extra) with the strongest proof each store offers; exit 0 only when '
                             'nothing is missing or different')
    parser.add_argument('--include', metavar='PATTERN', action=RuleAction, dest='rules', default=[],
                        help='fnmatch pattern on the key below the source prefix; with --exclude, the last '
                             'matching rule wins, as in the AWS CLI (repeatable)')
    parser.add_argument('--exclude', metavar='PATTERN', action=RuleAction, dest='rules', default=[],
                        help='leave out keys matching PATTERN (* matches "/" too; repeatable)')
    parser.add_argument('--version', action='version', version=f's3_upload {__version__}')
    single = parser.format_usage().split(' ', 1)[1].rstrip()
    parser.usage = single[len(parser.prog) + 1:].join(('%(prog)s ', '\n       s3_upload_cluster.py '
                                                      '{jobsender,worker,status} --config PATH ...'))
    return parser


class RuleAction(argparse.Action):
    """Collects --include / --exclude in command-line order."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Optional[str] = None) -> None:
        getattr(namespace, self.dest).append((option.lstrip('-') if option else 'include', value))


def parse_overrides(pairs: List[str]) -> Dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'--set {pair!r} must look like KEY=VALUE, e.g. --set MaxThread=10')
        overrides[key.strip()] = value
    return overrides


def fail_input(message: str) -> int:
    print(f's3_upload: error: {SecretFilter.redact(message)}', file=sys.stderr)
    return EXIT_BAD_INPUT


STOP_GRACE_SECONDS = 10


def install_signal_handlers(stop: threading.Event, quit_now: Callable[[int], None]) -> Dict[str, int]:
    """First Ctrl-C / SIGTERM: stop scheduling and let the parts in flight finish for a few seconds; then, or at
    a second one, quit_now(exit code) (it writes what was done, and exits; everything stays resumable)."""
    outcome = {'code': 0}

    def quit_in_background(code: int, why: str) -> None:
        # Not in the handler itself: the main thread it interrupts may hold a lock the summary needs.
        print(f'\n{why}: quitting; the parts in flight are left for the next run to resume', file=sys.stderr)
        threading.Thread(target=quit_now, args=(code,), name='quit', daemon=True).start()

    def handler(signum: int, _frame: Any) -> None:
        code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        if outcome['code']:
            quit_in_background(code, 'asked again')
            return
        outcome['code'] = code
        stop.set()
        timer = threading.Timer(STOP_GRACE_SECONDS, quit_in_background,
                                (code, f'the parts in flight did not finish within {STOP_GRACE_SECONDS}s'))
        timer.daemon = True
        timer.start()
        again = 'press Ctrl-C again' if signum == signal.SIGINT else 'send SIGTERM again'
        print(f'\nstopping: finishing the parts in flight ({again} to quit at once)...', file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return outcome


def check_report_path(path: str) -> None:
    """--report PATH can be written (tried now, before anything is transferred)."""
    if os.path.isdir(path):
        raise ConfigError(f'--report {path} is a folder: name a file')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f'--report {path}: folder {folder} does not exist: create it or name another file')
    trial = path + '.tmp'
    try:
        with open(trial, 'w', encoding='utf-8'):
            pass
        os.remove(trial)
    except OSError as error:
        raise ConfigError(f'cannot write --report {path} ({error.strerror}): name a file in a writable '
                          'folder') from None


def run_demo() -> int:
    """Start moto's S3 in-process, upload a few sample files (one multipart), show the result."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return fail_input('the demo needs moto: pip install "moto[server]"')
    import socket
    import tempfile
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID='DEMOACCESSKEYID00000', AWS_SECRET_ACCESS_KEY='demo/secret/key/only/for/moto',
                      AWS_EC2_METADATA_DISABLED='true')
    os.environ.pop('AWS_PROFILE', None)
    try:
        with tempfile.TemporaryDirectory(prefix='s3_upload_demo_') as folder:
            samples = {'readme.txt': b'hello from s3_upload\n', 'photos/猫 cat+dog%20.jpg': os.urandom(300_000),
                       'empty.dat': b'', 'big/video.bin': os.urandom(12 * MiB + 12345)}
            for name, data in samples.items():
                path = os.path.join(folder, 'src', *name.split('/'))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'wb') as handle:
                    handle.write(data)
            endpoint = f'http://127.0.0.1:{port}'
            config = Config.from_settings({
                'JobType': 'LOCAL_TO_S3', 'DesProfileName': '', 'DesEndPointURL': endpoint,
                'DesBucket': 'demo-bucket', 'S3Prefix': 'demo', 'SrcDir': os.path.join(folder, 'src'),
                'ChunkSize': 5, 'LogDir': os.path.join(folder, 'log'), 'LoggingLevel': 'INFO'})
            setup_logging(config)
            logging.getLogger('werkzeug').setLevel(logging.WARNING)
            client = make_client('', endpoint, 'us-east-1', 4)
            client.create_bucket(Bucket='demo-bucket')
            print(f'demo: local S3 (moto) at {endpoint}, uploading {len(samples)} files from {config.SrcDir}',
                  file=sys.stderr)
            report = run_job(config, show_progress=True)
            print(report.summary(), file=sys.stderr)
            print('objects now in s3://demo-bucket:', file=sys.stderr)
            for item in list_objects(client, 'demo-bucket', '', 1000):
                print(f'  {item["Key"]}  {item["Size"]} bytes  ETag {item["ETag"]}', file=sys.stderr)
            again = run_job(config)
            print(f'second run: {again.files_skipped} of {again.files_total} files skipped (already there)',
                  file=sys.stderr)
            return report.exit_code
    except ConfigError as error:
        return fail_input(str(error))
    finally:
        logging.shutdown()
        server.stop()


###############################################################################
# GUI #########################################################################
###############################################################################

ENDPOINT_PRESETS = ('AWS', 'https://s3.cn-north-1.amazonaws.com.cn', 'https://s3.cn-northwest-1.amazonaws.com.cn',
                    'https://storage.googleapis.com', 'https://oss-cn-beijing.aliyuncs.com',
                    'https://oss-cn-hangzhou.aliyuncs.com', 'https://s3.amazonaws.com')


def aws_profiles() -> List[str]:
    """Profiles of ~/.aws/credentials and ~/.aws/config (SSO and assume-role profiles included)."""
    try:
        import botocore.session
        return sorted(botocore.session.Session().available_profiles)
    except Exception:  # noqa: BLE001 - no profiles is a valid answer
        return []


class TransferRun:
    """One run of a job in a background thread: the same engine and report as the command line."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop = threading.Event()
        self.progress = Progress()
        self.meter = RateMeter(self.progress)
        self.report: Optional[Report] = None
        self.error = ''
        self.thread = threading.Thread(target=self._run, name='transfer', daemon=True)

    def start(self) -> 'TransferRun':
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.report = run_job(self.config, self.stop, self.progress)
        except ConfigError as error:
            self.error = str(error)
        except Exception as error:  # noqa: BLE001 - shown in the window, never a silent thread death
            logger.debug('transfer failed', exc_info=True)
            self.error = describe_error(error)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


class QueueLogHandler(logging.Handler):
    """Log records, formatted, for the window's log pane (read on the Tk thread)."""

    def __init__(self, lines: Any) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s', '%H:%M:%S'))
        self.addFilter(SecretFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.put(self.format(record))


class App:
    """The window: a form for a job (the original tool's fields), then live progress of the same engine."""

    FIELDS = ('JobType', 'SrcDir', 'SrcFileIndex', 'SrcProfileName', 'SrcEndPointURL', 'SrcBucket', 'SrcPrefix',
              'ali_SrcBucket', 'ali_endpoint', 'ali_access_key_id', 'ali_access_key_secret', 'DesProfileName',
              'DesEndPointURL', 'DesBucket', 'S3Prefix', 'MaxThread', 'MaxParallelFile', 'StorageClass')
    ACTIVE = {'LOCAL_TO_S3': {'SrcDir', 'SrcFileIndex'},
              'S3_TO_S3': {'SrcProfileName', 'SrcEndPointURL', 'SrcBucket', 'SrcPrefix', 'SrcFileIndex'},
              'ALIOSS_TO_S3': {'ali_SrcBucket', 'ali_endpoint', 'ali_access_key_id', 'ali_access_key_secret',
                               'SrcPrefix', 'SrcFileIndex'}}

    def __init__(self, root: Any, config_path: str) -> None:
        import queue
        import tkinter as tk
        from tkinter import ttk
        self.tk, self.ttk, self.root = tk, ttk, root
        self.config_path = config_path
        try:
            self.saved, _ = read_settings(config_path)
        except ConfigError:
            self.saved = {}
        self.vars: Dict[str, Any] = {}
        self.widgets: Dict[str, List[Any]] = {}
        self.errors: Dict[str, Any] = {}
        self.results: Any = queue.Queue()          # (callback, value) from background threads
        self.log_lines: Any = queue.Queue()
        self.run: Optional[TransferRun] = None
        self.finished = True                       # the current run's end has been shown
        self.logging_ready = False
        root.title(f's3_upload {__version__} - multi-threaded, resumable upload to Amazon S3')
        root.geometry('1000x700')
        root.minsize(900, 600)
        root.protocol('WM_DELETE_WINDOW', self.close)
        self._build()
        self.job_changed()
        self.log_handler = QueueLogHandler(self.log_lines)
        logger.addHandler(self.log_handler)
        self.root.after(200, self.poll)

    # -- form ------------------------------------------------------------------------------------
    def _value(self, name: str) -> str:
        option = OPTIONS_BY_KEY[name.lower()]
        return self.saved.get(name.lower(), option.default or '')

    def _row(self, parent: Any, row: int, name: str, label: str, kind: str = 'entry',
             values: Iterable[str] = (), buttons: Iterable[Tuple[str, Callable[[], None]]] = (),
             show: str = '') -> None:
        tk, ttk = self.tk, self.ttk
        var = self.vars.setdefault(name, tk.StringVar(value=self._value(name)))
        ttk.Label(parent, text=label).grid(row=row, column=0, sticky='w', padx=(6, 4), pady=2)
        if kind == 'combo':
            widget = ttk.Combobox(parent, textvariable=var, values=list(values), width=20)
        elif kind == 'readonly':
            widget = ttk.Combobox(parent, textvariable=var, values=list(values), width=20, state='readonly')
        elif kind == 'spin':
            widget = ttk.Spinbox(parent, textvariable=var, from_=1, to=1024, width=6)
        else:
            widget = ttk.Entry(parent, textvariable=var, width=20, show=show)
        widget.grid(row=row, column=1, sticky='w' if kind == 'spin' else 'we', pady=2)
        parent.columnconfigure(1, weight=1)
        widgets = [widget]
        if buttons:
            box = ttk.Frame(parent)
            box.grid(row=row, column=2, sticky='w', padx=(3, 0))
            for text, command in buttons:
                button = ttk.Button(box, text=text, command=command, style='Small.TButton')
                button.pack(side='left', padx=1)
                widgets.append(button)
        self.widgets[name] = widgets
        error = ttk.Label(parent, text='', foreground='#b00020')
        error.grid(row=row + 1, column=1, columnspan=2, sticky='w')
        error.grid_remove()
        self.errors[name] = error

    def _build(self) -> None:
        tk, ttk = self.tk, self.ttk
        style = ttk.Style(self.root)
        if 'clam' in style.theme_names():
            style.theme_use('clam')
        style.configure('Small.TButton', padding=(4, 1))
        style.configure('Horizontal.TProgressbar', background='#2f7d32', lightcolor='#4caf50', darkcolor='#1b5e20')
        for widget_style in ('TEntry', 'TCombobox', 'TSpinbox'):
            style.map(widget_style, fieldbackground=[('disabled', '#e4e4e4'), ('readonly', '#ffffff')])
        top = ttk.Frame(self.root, padding=6)
        top.pack(fill='x')
        self._row(top, 0, 'JobType', 'Job Type', 'readonly', JOB_TYPES)
        self.widgets['JobType'][0].grid_configure(sticky='w')
        self.widgets['JobType'][0].bind('<<ComboboxSelected>>', lambda _e: self.job_changed())
        columns = ttk.Frame(self.root, padding=(6, 0))
        columns.pack(fill='x')
        source = ttk.LabelFrame(columns, text='Source', padding=4)
        source.grid(row=0, column=0, sticky='nsew', padx=(0, 4))
        target = ttk.LabelFrame(columns, text='Destination', padding=4)
        target.grid(row=0, column=1, sticky='nsew')
        columns.columnconfigure(0, weight=1)
        columns.columnconfigure(1, weight=1)
        profiles = aws_profiles()
        self._row(source, 0, 'SrcDir', 'Local Folder', buttons=[('Select', self.pick_folder)])
        self._row(source, 2, 'SrcFileIndex', 'Filename or *', buttons=[('File', self.pick_file),
                                                                         ('All', self.all_files)])
        self._row(source, 4, 'SrcProfileName', 'Src AWS Profile', 'combo', profiles)
        self._row(source, 6, 'SrcEndPointURL', 'Src Endpoint URL', 'combo', ENDPOINT_PRESETS)
        self._row(source, 8, 'SrcBucket', 'Src S3 Bucket', 'combo', buttons=[('List Buckets', lambda: self.list_buckets('Src'))])
        self._row(source, 10, 'SrcPrefix', 'Src Prefix', 'combo', buttons=[('List Prefix', lambda: self.list_prefixes('Src'))])
        self._row(source, 12, 'ali_SrcBucket', 'OSS Bucket')
        self._row(source, 14, 'ali_endpoint', 'OSS Endpoint')
        self._row(source, 16, 'ali_access_key_id', 'OSS AccessKey ID')
        self._row(source, 18, 'ali_access_key_secret', 'OSS AccessKey Secret', show='*')
        self._row(target, 0, 'DesProfileName', 'Des AWS Profile', 'combo', profiles)
        self._row(target, 2, 'DesEndPointURL', 'Des Endpoint URL', 'combo', ENDPOINT_PRESETS)
        self._row(target, 4, 'DesBucket', 'Des S3 Bucket', 'combo', buttons=[('List Buckets', lambda: self.list_buckets('Des'))])
        self._row(target, 6, 'S3Prefix', 'Des S3 Prefix', 'combo', buttons=[('List Prefix', lambda: self.list_prefixes('Des'))])
        self._row(target, 8, 'MaxThread', 'MaxThread/File', 'spin')
        self._row(target, 10, 'MaxParallelFile', 'MaxParallelFile', 'spin')
        self._row(target, 12, 'StorageClass', 'S3 StorageClass', 'readonly', STORAGE_CLASSES)
        for side in ('Src', 'Des'):
            combo = self.widgets['SrcPrefix' if side == 'Src' else 'S3Prefix'][0]
            combo.bind('<<ComboboxSelected>>', lambda _e, s=side: self.list_prefixes(s))
        actions = ttk.Frame(self.root, padding=6)
        actions.pack(fill='x')
        self.save_var = tk.BooleanVar(value=True)
        ttk.Checkbutton(actions, text='Save to config.ini', variable=self.save_var).pack(side='left')
        self.start_button = ttk.Button(actions, text='Start Upload', command=self.start)
        self.start_button.pack(side='left', padx=6)
        self.stop_button = ttk.Button(actions, text='Stop', command=self.stop, state='disabled')
        self.stop_button.pack(side='left')
        self.resume_button = ttk.Button(actions, text='Resume', command=self.resume, state='disabled')
        self.resume_button.pack(side='left', padx=6)
        self.message = ttk.Label(actions, text='', foreground='#b00020')
        self.message.pack(side='left', padx=8)
        status = ttk.Frame(self.root, padding=(6, 0))
        status.pack(fill='x')
        self.bar = ttk.Progressbar(status, maximum=100, mode='determinate')
        self.bar.pack(fill='x')
        self.status = ttk.Label(status, text='Fill in the form and press Start Upload.')
        self.status.pack(fill='x', pady=2)
        lower = ttk.PanedWindow(self.root, orient='vertical')
        lower.pack(fill='both', expand=True, padx=6, pady=(0, 6))
        self.files = ttk.Treeview(lower, columns=('size', 'done'), height=4)
        self.files.heading('#0', text='Current files')
        self.files.heading('size', text='Size')
        self.files.heading('done', text='Done')
        self.files.column('#0', width=700, stretch=True)
        self.files.column('size', width=110, anchor='e', stretch=False)
        self.files.column('done', width=80, anchor='e', stretch=False)
        lower.add(self.files, weight=1)
        self.log = tk.Text(lower, height=8, wrap='none', font=('TkFixedFont', 9))
        self.log.bind('<Key>', lambda e: None if e.state & 4 and e.keysym in ('c', 'a') else 'break')
        lower.add(self.log, weight=2)

    def job_changed(self) -> None:
        """Enable the source fields of the chosen job type, disable the others."""
        active = self.ACTIVE.get(self.vars['JobType'].get(), set())
        for name in ('SrcDir', 'SrcFileIndex', 'SrcProfileName', 'SrcEndPointURL', 'SrcBucket', 'SrcPrefix',
                     'ali_SrcBucket', 'ali_endpoint', 'ali_access_key_id', 'ali_access_key_secret'):
            for widget in self.widgets[name]:
                widget.configure(state='normal' if name in active else 'disabled')
        local_file = self.widgets['SrcFileIndex'][1]
        local_file.configure(state='normal' if self.vars['JobType'].get() == 'LOCAL_TO_S3' else 'disabled')

    def pick_folder(self) -> None:
        from tkinter import filedialog
        folder = filedialog.askdirectory(initialdir=self.vars['SrcDir'].get() or os.getcwd())
        if folder:
            self.vars['SrcDir'].set(folder)
            self.vars['SrcFileIndex'].set('*')

    def pick_file(self) -> None:
        from tkinter import filedialog
        path = filedialog.askopenfilename(initialdir=self.vars['SrcDir'].get() or os.getcwd())
        if path:
            folder, name = os.path.split(path)
            self.vars['SrcDir'].set(folder)
            self.vars['SrcFileIndex'].set(name)

    def all_files(self) -> None:
        self.vars['SrcFileIndex'].set('*')

    def settings(self) -> Dict[str, str]:
        """The form as ini settings, on top of the other keys of the loaded ini."""
        values = {OPTIONS_BY_KEY[key].name: value for key, value in self.saved.items()}
        values.update({name: var.get().strip() for name, var in self.vars.items()})
        return values

    # -- background work: never on the Tk thread ----------------------------------------------------
    def background(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        def target() -> None:
            try:
                value = work()
            except Exception as error:  # noqa: BLE001 - reported in the window
                value = error
            self.results.put((done, value))
        threading.Thread(target=target, daemon=True).start()

    def _client(self, side: str) -> Callable[[], Any]:
        """A factory for one side's client; reads the form now, on the Tk thread."""
        settings = self.settings()
        return lambda: make_client(settings.get(f'{side}ProfileName', ''), _endpoint(settings.get(f'{side}EndPointURL', '')),
                           settings.get(f'{side}Region', ''), 4, 'source' if side == 'Src' else 'destination')

    def list_buckets(self, side: str) -> None:
        self.status.configure(text=f'Listing buckets of the {"source" if side == "Src" else "destination"} ...')

        def done(result: Any) -> None:
            if isinstance(result, BaseException):
                self.status.configure(text=f'Cannot list buckets: {describe_error(result)}')
                return
            self.widgets[f'{side}Bucket'][0].configure(values=result)
            self.status.configure(text=f'{len(result)} buckets listed.')

        client = self._client(side)
        self.background(lambda: [b['Name'] for b in client().list_buckets().get('Buckets', [])], done)

    def list_prefixes(self, side: str) -> None:
        """Drill down: the folders (Delimiter='/') below the prefix in the field."""
        field = 'SrcPrefix' if side == 'Src' else 'S3Prefix'
        bucket = self.vars[f'{side}Bucket'].get().strip()
        prefix = _prefix(self.vars[field].get())
        if not bucket:
            self.status.configure(text='Choose a bucket first.')
            return

        client = self._client(side)

        def work() -> List[str]:
            page = client().list_objects_v2(Bucket=bucket, Prefix=prefix + '/' if prefix else '',
                                                      Delimiter='/', MaxKeys=1000)
            return [p['Prefix'].rstrip('/') for p in page.get('CommonPrefixes', [])]

        def done(result: Any) -> None:
            if isinstance(result, BaseException):
                self.status.configure(text=f'Cannot list prefixes: {describe_error(result)}')
                return
            self.widgets[field][0].configure(values=[prefix] + result if prefix else result)
            self.status.configure(text=f'{len(result)} folders below "{prefix or "/"}".')

        self.background(work, done)

    # -- run -----------------------------------------------------------------------------------------
    def validate(self) -> Optional[Config]:
        """Check the form; show inline messages and return None when something is wrong."""
        for label in self.errors.values():
            label.grid_remove()
        settings = self.settings()
        problems: Dict[str, str] = {}
        job = settings.get('JobType', '')
        if job == 'LOCAL_TO_S3' and not os.path.isdir(settings.get('SrcDir', '')):
            problems['SrcDir'] = 'Choose an existing local folder.'
        if not settings.get('DesBucket'):
            problems['DesBucket'] = 'Enter or list the destination bucket.'
        if job == 'S3_TO_S3' and not settings.get('SrcBucket'):
            problems['SrcBucket'] = 'Enter or list the source bucket.'
        if job == 'ALIOSS_TO_S3' and not settings.get('ali_SrcBucket'):
            problems['ali_SrcBucket'] = 'Enter the OSS bucket.'
        config = None
        if not problems:
            try:
                config = Config.from_settings({k: v for k, v in settings.items() if v != '' or
                                               OPTIONS_BY_KEY[k.lower()].default is not None})
            except ConfigError as error:
                text = str(error)
                field = next((name for name in self.FIELDS if name in text), 'JobType')
                problems[field] = text.split(': fix')[0]
        for field, text in problems.items():
            self.errors[field].configure(text=text)
            self.errors[field].grid()
        self.message.configure(text='Please correct the marked fields.' if problems else '', foreground='#b00020')
        return config

    def start(self, confirm: bool = True) -> None:
        config = self.validate()
        if config is None:
            return
        source = {'LOCAL_TO_S3': os.path.join(config.SrcDir, '' if config.SrcFileIndex == '*' else config.SrcFileIndex),
                  'S3_TO_S3': f's3://{config.SrcBucket}/{config.SrcPrefix}',
                  'ALIOSS_TO_S3': f'oss://{config.ali_SrcBucket}/{config.SrcPrefix}'}[config.JobType]
        summary = (f'{config.JobType}\n\nFROM: {source}\nTO:   s3://{config.DesBucket}/{config.S3Prefix}\n\n'
                   f'up to {config.MaxParallelFile} files x {config.MaxThread} parts in flight, {config.StorageClass}')
        if confirm:
            from tkinter import messagebox
            if not messagebox.askokcancel('Start upload?', summary, parent=self.root):
                return
        if self.save_var.get():
            write_settings(self.config_path, self.settings())
            self.saved, _ = read_settings(self.config_path)
        self._launch(config)

    def _launch(self, config: Config) -> None:
        if not self.logging_ready:
            try:
                setup_logging(config)
            except ConfigError as error:
                self.message.configure(text=f'cannot write logs to {config.LogDir}: {error}', foreground='#b00020')
                return
            logger.addHandler(self.log_handler)
            self.logging_ready = True
        self.finished = False
        self.run = TransferRun(config).start()
        self.start_button.configure(state='disabled')
        self.resume_button.configure(state='disabled')
        self.stop_button.configure(state='normal')
        self.status.configure(text='Checking source and destination ...')

    def stop(self) -> None:
        """Graceful, resumable: no new parts; the parts in flight finish."""
        if self.run and self.run.running:
            self.run.stop.set()
            self.stop_button.configure(state='disabled')
            self.status.configure(text='Stopping: finishing the parts in flight ...')

    def resume(self) -> None:
        if self.run and not self.run.running:
            self._launch(self.run.config)

    def close(self) -> None:
        if self.run and self.run.running:
            from tkinter import messagebox
            if not messagebox.askyesno('Transfer running', 'A transfer is running. Stop it and quit? '
                                       'Run it again later to resume.', parent=self.root):
                return
            self.run.stop.set()
            self.run.thread.join(STOP_GRACE_SECONDS)
        logger.removeHandler(self.log_handler)
        self.root.destroy()

    # -- live view (Tk thread, every 200 ms) -----------------------------------------------------------
    def poll(self) -> None:
        while not self.results.empty():
            callback, value = self.results.get_nowait()
            callback(value)
        lines = []
        while not self.log_lines.empty():
            lines.append(self.log_lines.get_nowait())
        if lines:
            self.log.insert('end', '\n'.join(lines) + '\n')
            self.log.see('end')
        if self.run is not None and not self.finished:
            self.show(self.run)
            if not self.run.running:
                self.finished = True
                self.finish(self.run)
        self.root.after(200, self.poll)

    def show(self, run: TransferRun) -> None:
        r = run.meter.read()
        self.bar['value'] = 100.0 * r.fraction
        self.status.configure(text=f'{r.fraction * 100:5.1f}%  {human_bytes(r.done)} of {human_bytes(r.total)}  '
                                   f'{r.doing()}   files {r.files}  transferred {r.transferred}  skipped {r.skipped}  '
                                   f'failed {r.failed}')
        shown = set(self.files.get_children())
        for key, (sent, size) in r.active.items():
            values = (human_bytes(size), f'{100.0 * sent / size if size else 100:.0f}%')
            if key in shown:
                self.files.item(key, values=values)
            else:
                self.files.insert('', 'end', iid=key, text=key, values=values)
        for key in shown - set(r.active):
            self.files.delete(key)

    def finish(self, run: TransferRun) -> None:
        self.start_button.configure(state='normal')
        self.stop_button.configure(state='disabled')
        if run.error:
            self.message.configure(text=run.error, foreground='#b00020')
            self.status.configure(text='Nothing was transferred: fix the problem and press Start Upload.')
            return
        report = run.report
        assert report is not None
        self.log.insert('end', report.summary() + '\n')
        self.log.see('end')
        if report.stopped:
            self.resume_button.configure(state='normal')
            self.message.configure(text='Stopped. Press Resume to continue where it stopped.', foreground='#b00020')
        else:
            failed = report.files_failed
            self.message.configure(text=f'{failed} files failed: see the log below.' if failed else 'Done.',
                                   foreground='#b00020' if failed else '#1b5e20')


def run_gui(config_path: str) -> int:
    """Open the window (exit 2 with one line when there is no tkinter or no display)."""
    try:
        import tkinter as tk
    except ImportError:
        return fail_input('the GUI needs tkinter, which this Python lacks: install python3-tk or run with --nogui')
    try:
        root = tk.Tk()
    except tk.TclError as error:
        return fail_input(f'cannot open a window ({error}): no display here; run with --nogui')
    App(root, config_path)
    root.mainloop()
    return EXIT_OK


###############################################################################
# Main ########################################################################
###############################################################################

def fleet_main(argv: List[str]) -> int:
    """`s3_upload.py worker ...` as earlier versions took it: the fleet lives in s3_upload_cluster.py."""
    try:
        import s3_upload_cluster
    except ImportError:
        return fail_input(f'{argv[0]} is a command of the worker fleet: put s3_upload_cluster.py beside '
                          's3_upload.py and run python3 s3_upload_cluster.py ' + ' '.join(argv))
    return s3_upload_cluster.main(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ('jobsender', 'worker', 'status'):
        return fleet_main(argv)
    args = build_parser().parse_args(argv)
    if args.demo:
        return run_demo()
    if args.gui or (not args.nogui and os.name == 'nt'):
        return run_gui(args.config or default_config_path())
    try:
        if args.check and args.dry_run:
            raise ConfigError('--check and --dry-run cannot go together: --check changes nothing either')
        if args.report:
            check_report_path(args.report)
        config = Config.load(args.config or default_config_path(), parse_overrides(args.set), dict(os.environ))
        log_file = setup_logging(config, deferred=True)
    except ConfigError as error:
        return fail_input(str(error))
    for warning in config.warnings:
        logger.warning('%s', warning)
    progress, stop = Progress(), threading.Event()

    def finish(report: Report) -> None:
        """The summary on the console and at the end of the log file, and the JSON report."""
        if not args.dry_run:
            ConsoleHandler.clear_line(sys.stderr)
            print(report.summary(), file=sys.stderr)
            for line in report.summary().splitlines():
                logger.info('%s', line, extra={'console': False})
        if args.report:
            try:
                report.write(args.report)
            except OSError as error:
                print(f's3_upload: error: cannot write --report {args.report}: {error.strerror}', file=sys.stderr)

    def quit_now(code: int) -> None:
        finish(Report.from_progress(progress, True, args.dry_run))
        logging.shutdown()
        os._exit(code)

    outcome = install_signal_handlers(stop, quit_now)
    try:
        report = run_job(config, stop, progress, show_progress=not args.dry_run and not args.check,
                         ask=not args.check, rules=args.rules, dry_run=args.dry_run, accepted=log_file.open,
                         check=args.check)
    except ConfigError as error:
        logger.debug('bad input', exc_info=True)
        return fail_input(str(error))
    logger.info('log file: %s', log_file.path)
    finish(report)
    if report.stopped and not report.halted:
        return outcome['code'] or EXIT_SIGINT
    return report.exit_code


def leave(code: int) -> None:
    """Exit with code. When only daemon threads are left, flush the logs and skip the interpreter's teardown
    (freeing botocore's models is felt by whoever runs the tool in a loop); with other threads, exit normally."""
    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.current_thread()):
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == '__main__':
    leave(main())

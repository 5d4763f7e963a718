#!/usr/bin/env python3
"""Planning at scale: 100,000 source files or keys against a 100,000-key destination.

    python3 bench/planning.py                                 # local files -> rclone serve s3
    python3 bench/planning.py --source s3 --server seaweed    # keys in a bucket -> another bucket, other credentials

The destination already holds half of the source (same key and size) plus 50,000 keys the source does not
have; the other 50,000 source files, interleaved in key order, must be sent. Measured: the time from start
until the first object is complete at the destination (the first 'done' line of the tool's log), the total
time, and peak RSS (planning memory), with the shipped s3_upload_config.ini (LoggingLevel = DEBUG for the
per-file lines).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

COUNT = 100_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', choices=('local', 's3'), default='local')
    parser.add_argument('--server', choices=('rclone', 'seaweed'), default='rclone',
                        help='the destination store (an S3 source is a bucket on a SeaweedFS of its own)')
    arguments = parser.parse_args()
    bench.ensure_tools()
    workdir = Path(tempfile.gettempdir()) / 's3_upload-bench'
    source = workdir / 'planning-source'
    present = workdir / 'planning-present'
    if not (source / f'{COUNT - 1:06d}.txt').exists():
        for folder in (source, present):
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(COUNT):
            body = f'{i:06d}\n'.encode() * 10
            (source / f'{i:06d}.txt').write_bytes(body)
            (present / (f'{i:06d}.txt' if i % 2 == 0 else f'{i:06d}.other')).write_bytes(body)
    server = bench.Server(arguments.server, workdir)
    source_server = None
    log_dir = workdir / 'planning-log'
    try:
        if arguments.source == 's3':
            source_server = bench.Server('seaweed', workdir)      # another endpoint
        bucket = server.bucket()
        print(f'filling the destination with {COUNT:,} keys ...', flush=True)
        bench.upload_folder(server, bucket, present, workdir, 'p/')
        if source_server:
            source_bucket = source_server.bucket()
            print(f'filling the source bucket with {COUNT:,} keys ...', flush=True)
            bench.upload_folder(source_server, source_bucket, source, workdir, 'p/')
            source_settings = ['JobType=S3_TO_S3', 'SrcProfileName=other', f'SrcEndPointURL={source_server.endpoint}',
                               f'SrcBucket={source_bucket}', 'SrcPrefix=p']
        else:
            source_settings = ['JobType=LOCAL_TO_S3', f'SrcDir={source}']
        env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
        env.update(bench.aws_files(workdir))
        command = [sys.executable, str(bench.TOOL), '--nogui', '--config', str(bench.ROOT / 's3_upload_config.ini')]
        for setting in [*source_settings, 'DesProfileName=main', f'DesEndPointURL={server.endpoint}',
                        f'DesBucket={bucket}', 'S3Prefix=p', f'LogDir={log_dir}', 'LoggingLevel=DEBUG']:
            command += ['--set', setting]
        logs_before = set(log_dir.glob('*.log')) if log_dir.exists() else set()
        started = time.time()
        wall, cpu, rss, code = bench.run_measured(command, env, kill_after=3600)   # the store's time, at 150,000 keys
        first = first_done(set(log_dir.glob('*.log')) - logs_before) - started
        listed = subprocess.run(['s5cmd', '--endpoint-url', server.endpoint, 'ls', f's3://{bucket}/p/*'],
                                capture_output=True, text=True, env={**env, 'AWS_ACCESS_KEY_ID': bench.KEYS['main'][0],
                                                                     'AWS_SECRET_ACCESS_KEY': bench.KEYS['main'][1],
                                                                     'AWS_REGION': 'us-east-1'}).stdout
        objects = sum(1 for line in listed.splitlines() if line.strip())
    finally:
        server.stop()
        if source_server:
            source_server.stop()
    print('\n| source | destination | source keys | destination keys | to send | first object done after | total | '
          'peak RSS | exit | objects after |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    print(f'| {arguments.source} | {arguments.server} | {COUNT:,} | {COUNT:,} | {COUNT // 2:,} | {first:.2f} s | '
          f'{wall:.1f} s | {rss:.0f} MiB | {code} | {objects:,} |')
    return 0 if code == 0 and objects == COUNT + COUNT // 2 else 1


def first_done(logs: set) -> float:
    """Wall-clock time of the run log's first 'done <key>' line (an object complete and verified)."""
    for log in logs:
        for line in log.open(encoding='utf-8', errors='replace'):
            if ' done ' in line:
                stamp = datetime.datetime.strptime(line[:23], '%Y-%m-%d %H:%M:%S,%f')
                return stamp.timestamp()
    return float('nan')


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python3
"""Peak memory of s3_upload against its documented bound (a benchmark-style check, not a timed test).

    python3 bench/memory.py                  # 2 GiB file, 20,000 small files, 100,000-key destination

Bound (README, "Memory"): peak RSS <= BASE + min(MemoryLimit, MaxParallelFile x MaxThread x part size)
x 1.25, with BASE = 100 MiB (Python, boto3, two clients, thread stacks). Listing is streamed: a run over
a 100,000-key destination whose objects are all already there must stay within BASE + a few MiB, i.e.
it holds no per-key state. Every run uses the shipped s3_upload_config.ini. Prints a table and exits 1
if a bound is broken.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the harness: servers, credentials, measured runs)

sys.path.insert(0, str(bench.ROOT))
import s3_upload  # noqa: E402

MiB = 1024 * 1024
BASE_MIB = 100


def measure(job_settings: dict, workdir: Path) -> tuple:
    command = [sys.executable, str(bench.TOOL), '--nogui', '--config', str(bench.ROOT / 's3_upload_config.ini')]
    for key, value in job_settings.items():
        command += ['--set', f'{key}={value}']
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    env.update(bench.aws_files(workdir))
    wall, cpu, rss, code = bench.run_measured(command, env)
    return wall, rss, code


def main() -> int:
    bench.ensure_tools()
    workdir = Path(tempfile.gettempdir()) / 's3_upload-bench'
    data = workdir / 'memory-data'
    data.mkdir(parents=True, exist_ok=True)
    config = s3_upload.Config.load(str(bench.ROOT / 's3_upload_config.ini'), {'DesBucket': 'x', 'SrcDir': '/'})
    part = config.ChunkSize * MiB
    bound = BASE_MIB + 1.25 * min(config.MemoryLimit * MiB, config.MaxParallelFile * config.MaxThread * part) / MiB
    server = bench.Server('rclone', workdir)
    rows, ok = [], True
    try:
        big = data / 'big'
        if not (big / 'two.bin').exists():
            big.mkdir(exist_ok=True)
            with open(big / 'two.bin', 'wb') as handle:
                for _ in range(256):
                    handle.write(os.urandom(8 * MiB))
        small = data / 'small'
        if not (small / '19999.dat').exists():
            small.mkdir(exist_ok=True)
            for i in range(20000):
                (small / f'{i:05d}.dat').write_bytes(os.urandom(1024 + i % 4096))
        base = {'DesProfileName': 'main', 'DesEndPointURL': server.endpoint, 'LogDir': str(workdir / 'mem-log'),
                'JobType': 'LOCAL_TO_S3', 'S3Prefix': 'm'}
        for name, folder in (('one 2 GiB file', big), ('20,000 small files', small)):
            wall, rss, code = measure({**base, 'DesBucket': server.bucket(), 'SrcDir': folder}, workdir)
            fine = code == 0 and rss <= bound
            ok &= fine
            rows.append((name, wall, rss, bound, fine))
        # A destination of 100,000 keys, all already there: the run lists and skips everything.
        keys = data / 'keys'
        if not (keys / '99999').exists():
            keys.mkdir(exist_ok=True)
            for i in range(100000):
                (keys / f'{i:05d}').write_bytes(b'')
        bucket = server.bucket()
        bench.upload_folder(server, bucket, keys, workdir, 'm/')      # s5cmd, fastest here
        wall, rss, code = measure({**base, 'DesBucket': bucket, 'SrcDir': keys}, workdir)
        listing_bound = BASE_MIB + 20
        fine = code == 0 and rss <= listing_bound
        ok &= fine
        rows.append(('100,000 keys listed and skipped', wall, rss, listing_bound, fine))
    finally:
        server.stop()
    print(f'\nMemory (defaults: ChunkSize {config.ChunkSize} MiB, MaxThread {config.MaxThread}, '
          f'MaxParallelFile {config.MaxParallelFile}, MemoryLimit {config.MemoryLimit} MiB)\n')
    print('| run | seconds | peak RSS MiB | bound MiB | within |')
    print('|---|---:|---:|---:|---|')
    for name, wall, rss, limit, fine in rows:
        print(f'| {name} | {wall:.1f} | {rss:.0f} | {limit:.0f} | {"yes" if fine else "**NO**"} |')
    out = bench.HERE / 'results'
    out.mkdir(exist_ok=True)
    (out / f'memory-{time.strftime("%Y%m%d-%H%M%S")}.json').write_text(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())

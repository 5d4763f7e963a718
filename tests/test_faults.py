"""Reliability of the engine: network faults through a fault-injecting proxy, kill -9 at random moments,
sources that change or vanish mid-copy. Nothing may ever be lost or corrupted."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from conftest import (MiB, SMALL_PARTS, bucket_contents, dest_settings, leftover_upload, random_bytes, s3_to_s3,
                      unfinished_uploads, wait_for_parts, write_tree)
from fault_proxy import FaultProxy



def proxied(server, proxy, bucket, **more):
    settings = dest_settings(server, bucket, **more)
    settings['DesEndPointURL'] = proxy.endpoint
    return settings


FILES = {'small.txt': b'small object body', 'empty': b'', 'multi.bin': random_bytes(16 * MiB + 3, 30)}

# (action, method, target regex, options)
RECOVERABLE = {
    'reset mid-request (UploadPart)': ('reset_request', 'PUT', r'partNumber=2', {}),
    'reset mid-request (PutObject)': ('reset_request', 'PUT', r'/small\.txt$', {}),
    'reset mid-response (listing)': ('reset_response', 'GET', r'list-type=2.*max-keys=1000', {}),
    'stall (UploadPart)': ('stall', 'PUT', r'partNumber=3', {'seconds': 5}),
    'stall (PutObject)': ('stall', 'PUT', r'/small\.txt$', {'seconds': 5}),
    'truncated response (listing)': ('truncate', 'GET', r'list-type=2.*max-keys=1000', {}),
    '500 InternalError': ('status', 'PUT', r'partNumber=', {'status': 500, 'code': 'InternalError', 'times': 3}),
    '503 SlowDown throttling': ('status', None, r'/multi\.bin|/small', {'status': 503, 'code': 'SlowDown', 'times': 12}),
    '400 RequestTimeout': ('status', 'PUT', r'partNumber=', {'status': 400, 'code': 'RequestTimeout', 'times': 2}),
    'corrupted part body': ('corrupt', 'PUT', r'partNumber=1', {'times': 2}),
    'corrupted PutObject body': ('corrupt', 'PUT', r'/small\.txt$', {}),
    '500 on CompleteMultipartUpload': ('status', 'POST', r'uploadId=', {'status': 500, 'code': 'InternalError'}),
    'InvalidPart on CompleteMultipartUpload': ('status', 'POST', r'uploadId=', {'status': 400, 'code': 'InvalidPart'}),
}


@pytest.mark.parametrize('fault', list(RECOVERABLE))
def test_transfer_completes_through_network_faults(fault, seaweed, proxy, tool, tmp_path):
    action, method, match, options = RECOVERABLE[fault]
    rule = proxy.add(action, method, match, **options)
    src = write_tree(tmp_path / 'src', FILES)
    bucket = seaweed.bucket()
    run = tool.run(proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS, RequestTimeout=2, MaxRetry=8))
    assert rule.hits >= 1, f'the fault never fired: {proxy.log}'
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == FILES
    assert unfinished_uploads(seaweed, bucket) == []
    if action == 'corrupt':
        assert 'BadDigest' in run.stderr           # rejected by Content-MD5, then sent again


def test_reset_mid_response_of_a_source_read(seaweed, moto, tool):
    """S3_TO_S3: the ranged GET of a part breaks off half-way; the part is read again."""
    fault_proxy = FaultProxy(seaweed.endpoint)
    try:
        src_bucket, dst_bucket = seaweed.bucket('src'), moto.bucket()
        data = random_bytes(11 * MiB, 31)
        seaweed.client().put_object(Bucket=src_bucket, Key='big.bin', Body=data)
        seaweed.client().put_object(Bucket=src_bucket, Key='small', Body=b'x' * 1000)
        rules = [fault_proxy.add('reset_response', 'GET', rf'/{src_bucket}/big\.bin', times=2),
                 fault_proxy.add('truncate', 'GET', rf'/{src_bucket}/small', times=1)]
        run = tool.run(s3_to_s3(seaweed, src_bucket, moto, dst_bucket, SrcEndPointURL=fault_proxy.endpoint,
                                **SMALL_PARTS, MaxRetry=5))
        assert all(rule.hits for rule in rules)
        assert run.code == 0, run.stderr
        assert bucket_contents(moto, dst_bucket) == {'big.bin': data, 'small': b'x' * 1000}
    finally:
        fault_proxy.stop()


def test_a_put_never_answered_is_cut_at_its_deadline_and_sent_again(seaweed, proxy, tool, tmp_path):
    """The store takes a small PutObject and does not answer for 30 s: awscrt reports no progress of the
    body to wait on, so the lane cuts it at its deadline (2 x RequestTimeout for so few bytes), and a worker
    sends it again. A run that waited for the answer would not be done in 25 s."""
    import re
    rule = proxy.add('stall', 'PUT', r'/small\.txt$', seconds=30)
    src = write_tree(tmp_path / 'src', FILES)
    bucket = seaweed.bucket()
    run = tool.run(proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS, RequestTimeout=1, MaxRetry=3), timeout=25)
    assert rule.hits == 1
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == FILES
    assert re.search(r'PutObject small\.txt failed \(.*PutObject: no answer in 2 s\); a worker sends it again', run.stderr)


def test_small_files_the_lane_gives_up_on_are_sent_again_after_a_backoff(seaweed, proxy, tool, tmp_path):
    """The first PutObject of each of 20 small files arrives corrupted (400 BadDigest, which awscrt does not
    retry itself; 503 SlowDown and 400 RequestTimeout it retries with its own backoff): the worker that
    takes each over waits the retrier's first backoff (full jitter over 0-1 s, 0.5 s on average) before
    sending it again, as any retry does. Sent again at once, the second tries followed the first within
    about 50 ms, all together."""
    files = {f'f{n:02}.txt': random_bytes(1000, n) for n in range(20)}
    rule = proxy.add('corrupt', 'PUT', r'/f\d\d\.txt$', times=20)
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    run = tool.run(proxied(seaweed, proxy, bucket, SrcDir=src, MaxRetry=5))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == files
    assert rule.hits == 20
    tries: dict = {}
    for (method, target, _), arrived in zip(proxy.agents, proxy.arrivals):
        if method == 'PUT' and target.endswith('.txt'):
            tries.setdefault(target, []).append(arrived)
    gaps = [times[1] - times[0] for times in tries.values() if len(times) > 1]
    assert len(gaps) >= 15, tries
    assert sum(gaps) / len(gaps) > 0.15, gaps


PERMANENT = {
    '403 AccessDenied on UploadPart': ('PUT', r'multi\.bin\?.*partNumber=', 403, 'AccessDenied', 'AccessDenied'),
    '400 InvalidStorageClass on PutObject': ('PUT', r'/small\.txt$', 400, 'InvalidStorageClass', 'InvalidStorageClass'),
}


@pytest.mark.parametrize('fault', list(PERMANENT))
def test_permanent_errors_fail_fast_with_a_clear_message(fault, seaweed, proxy, tool, tmp_path):
    method, match, status, code, message = PERMANENT[fault]
    rule = proxy.add('status', method, match, times=-1, status=status, code=code)
    src = write_tree(tmp_path / 'src', FILES)
    bucket = seaweed.bucket()
    threads = 3
    run = tool.run(proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=threads, MaxRetry=20))
    assert run.code == 1, run.stderr
    assert rule.hits <= threads, 'a permanent error must not be retried'
    failed = {f['key']: f['error'] for f in run.report['failures']}
    assert len(failed) == 1 and message in next(iter(failed.values()))
    others = {k: v for k, v in FILES.items() if k not in failed}
    assert {k: v for k, v in bucket_contents(seaweed, bucket).items()} == others


def test_expired_token_before_any_transfer_exits_2(seaweed, proxy, tool, tmp_path):
    proxy.add('status', 'GET', r'list-type=2', times=-1, status=400, code='ExpiredToken')
    src = write_tree(tmp_path / 'src', FILES)
    run = tool.run(proxied(seaweed, proxy, seaweed.bucket(), SrcDir=src))
    assert run.code == 2 and 'credentials rejected' in run.stderr and 'ExpiredToken' in run.stderr


def test_part_changed_at_the_store_before_completion_is_sent_again(moto, tool, tmp_path):
    """A part the store holds otherwise than it acknowledged it (as a killed run's late request can leave
    it): Complete refuses it (InvalidPart), that part alone is sent again, and the object is whole."""
    data = random_bytes(15 * MiB, 32)
    src = write_tree(tmp_path / 'src', {'big.bin': data})
    bucket = moto.bucket()
    fault_proxy = FaultProxy(moto.endpoint)
    try:
        fault_proxy.add('stall', 'PUT', r'partNumber=3', seconds=4)      # time to change part 1 before Complete
        process = tool.start(proxied(moto, fault_proxy, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1))
        if len(wait_for_parts(moto, bucket, 'big.bin', 3, timeout=30)) < 3:
            process.kill()
            pytest.fail(f'the upload never held 3 parts: {process.communicate()[1].decode()[-2000:]}')
        client = moto.client()
        upload_id = client.list_multipart_uploads(Bucket=bucket)['Uploads'][0]['UploadId']
        client.upload_part(Bucket=bucket, Key='big.bin', UploadId=upload_id, PartNumber=1, Body=b'\0' * (5 * MiB))
        _, stderr = process.communicate(timeout=120)
    finally:
        fault_proxy.stop()
    assert process.returncode == 0, stderr
    assert 'sending 1 part(s) again (listed otherwise than acknowledged)' in stderr.decode()
    assert bucket_contents(moto, bucket) == {'big.bin': data}
    assert unfinished_uploads(moto, bucket) == []


@pytest.mark.parametrize('overwritten', [False, True], ids=['as-sent', 'overwritten'])
def test_part_stored_but_never_acknowledged_is_read_again_and_kept_if_it_matches(overwritten, seaweed, proxy,
                                                                                 tool, tmp_path):
    """kill -9 while the answer to part 3 is held back: the store lists part 3, but the run never saw it
    accepted, so the next run reads that range again: the same bytes (MD5 = its ETag) keep part 3; bytes
    that differ from it now are sent again."""
    data = random_bytes(20 * MiB, 33)
    src = write_tree(tmp_path / 'src', {'big.bin': data})
    bucket = seaweed.bucket()
    proxy.add('stall', 'PUT', r'partNumber=3', seconds=60)
    settings = proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1)
    process = tool.start(settings)
    assert len(wait_for_parts(seaweed, bucket, 'big.bin', 3, timeout=30)) == 3
    process.send_signal(signal.SIGKILL)
    process.wait()
    if overwritten:     # part 3's range changes in place, size and mtime kept: the journal cannot tell
        path, stat = src / 'big.bin', (src / 'big.bin').stat()
        data = data[:11 * MiB] + bytes(MiB) + data[12 * MiB:]
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1))
    assert run.code == 0, run.stderr
    assert ('1 of 3 listed parts cannot be proven to hold the source' in run.stderr) == overwritten
    assert (run.report['parts_resumed'], run.report['parts_uploaded']) == ((2, 2) if overwritten else (3, 1))
    assert bucket_contents(seaweed, bucket) == {'big.bin': data}
    assert unfinished_uploads(seaweed, bucket) == []


def test_crash_at_any_instant(seaweed, proxy, tool, tmp_path):
    """20 SIGKILLs at seeded random moments; then every object is whole and little was sent twice."""
    rng = random.Random(20261125)
    files = {f'small/{i:03d}.dat': rng.randbytes(rng.randint(1, 20_000)) for i in range(240)}
    files.update({f'zero/{i}.dat': b'' for i in range(12)})
    files.update({f'big/{i}.bin': rng.randbytes(rng.randint(11 * MiB, 16 * MiB)) for i in range(8)})
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    files_in_flight, threads = 4, 2
    settings = proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=threads,
                       MaxParallelFile=files_in_flight, BandwidthLimit=3, RequestTimeout=5)
    restarts = 0
    for _ in range(20):
        process = tool.start(settings)
        time.sleep(rng.uniform(0.2, 1.2))
        if process.poll() is not None:
            break                      # finished before the kill
        process.send_signal(signal.SIGKILL)
        process.wait()
        restarts += 1
    before_last = proxy.upload_bytes
    final = tool.run(settings)
    assert final.code == 0, final.stderr
    assert restarts == 20, f'only {restarts} kills landed mid-job'
    assert bucket_contents(seaweed, bucket) == files
    assert unfinished_uploads(seaweed, bucket) == []
    resent = proxy.upload_bytes - sum(map(len, files.values()))
    print(f'{restarts} kills: {before_last} bytes sent before the last run, {resent} sent twice, '
          f'{final.report["bytes_resumed"]} reused by it')
    # What the killed runs sent stays: only what each kill cut off in flight is sent again (without resume,
    # the last run would send every byte of the big files again: resent ~ before_last).
    assert 0 <= resent <= before_last // 4
    assert final.report['bytes_resumed'] > 0


def test_local_file_modified_during_upload_is_redone(seaweed, tool, tmp_path):
    data = random_bytes(30 * MiB, 32)
    src = write_tree(tmp_path / 'src', {'live.bin': data})
    bucket = seaweed.bucket()
    process = tool.start(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1, BandwidthLimit=10))
    assert wait_for_parts(seaweed, bucket, 'live.bin', 2)
    changed = random_bytes(30 * MiB, 33)
    (src / 'live.bin').write_bytes(changed)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert b'starting this file again' in err
    assert bucket_contents(seaweed, bucket) == {'live.bin': changed}
    assert unfinished_uploads(seaweed, bucket) == []


def test_local_file_truncated_during_upload_is_redone(seaweed, tool, tmp_path):
    data = random_bytes(30 * MiB, 34)
    src = write_tree(tmp_path / 'src', {'shrinks.bin': data})
    bucket = seaweed.bucket()
    process = tool.start(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1, BandwidthLimit=10))
    assert wait_for_parts(seaweed, bucket, 'shrinks.bin', 2)
    os.truncate(src / 'shrinks.bin', 12 * MiB)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert bucket_contents(seaweed, bucket) == {'shrinks.bin': data[:12 * MiB]}
    assert unfinished_uploads(seaweed, bucket) == []


def test_s3_source_deleted_mid_copy_fails_that_key(moto, seaweed, tool):
    src_bucket, dst_bucket = moto.bucket(), seaweed.bucket()
    client = moto.client()
    client.put_object(Bucket=src_bucket, Key='doomed.bin', Body=random_bytes(30 * MiB, 35))
    client.put_object(Bucket=src_bucket, Key='fine.txt', Body=b'fine')
    process = tool.start(s3_to_s3(moto, src_bucket, seaweed, dst_bucket, **SMALL_PARTS, MaxThread=1,
                                  BandwidthLimit=10))
    assert wait_for_parts(seaweed, dst_bucket, 'doomed.bin', 1)
    client.delete_object(Bucket=src_bucket, Key='doomed.bin')
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err.decode()
    assert b'FAILED doomed.bin: source object was deleted' in err
    assert bucket_contents(seaweed, dst_bucket) == {'fine.txt': b'fine'}
    assert unfinished_uploads(seaweed, dst_bucket) == []


def test_an_upload_started_under_another_checksum_setting_is_started_again(seaweed, proxy, tool, tmp_path):
    """S3 takes parts only under the checksum an upload was started with (InvalidRequest otherwise): an
    upload left by a run with other settings is aborted and the file sent again, instead of failing."""
    import re
    data = random_bytes(16 * MiB, 41)
    src = write_tree(tmp_path / 'src', {'x.bin': data})
    bucket = seaweed.bucket()
    old = leftover_upload(seaweed, bucket, 'x.bin', {1: data[:5 * MiB]})
    rule = proxy.add('status', 'PUT', rf'/x\.bin\?.*uploadId={re.escape(old)}', times=-1, status=400,
                     code='InvalidRequest', message='Checksum Type mismatch occurred, expected checksum Type: null, '
                                                    'actual checksum Type: crc64nvme')
    run = tool.run(proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS))
    assert rule.hits >= 1 and run.code == 0, run.stderr
    assert 'started under another checksum setting' in run.stderr
    assert bucket_contents(seaweed, bucket) == {'x.bin': data}
    assert unfinished_uploads(seaweed, bucket) == []


@pytest.mark.parametrize('checksum', ['auto', 'none'])
def test_an_object_that_contradicts_the_parts_sent_is_never_taken_as_ours(checksum, seaweed, proxy, tool, tmp_path):
    """The upload vanishes before CompleteMultipartUpload (NoSuchUpload: a lifecycle rule, an operator, another
    run) while the key holds an older object of the same size: its checksum (auto) or ETag (none) contradicts
    the parts sent, so it is not ours, and the file is sent again, never reported verified."""
    old, new = random_bytes(16 * MiB, 50), random_bytes(16 * MiB, 51)
    src = write_tree(tmp_path / 'src', {'big.bin': old})
    bucket = seaweed.bucket()
    settings = proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS, CompareMode='identity',
                       ChecksumAlgorithm=checksum)
    assert tool.run(settings).code == 0
    (src / 'big.bin').write_bytes(new)
    rule = proxy.add('status', 'POST', r'/big\.bin\?uploadId=', status=404, code='NoSuchUpload')
    run = tool.run(settings)
    assert rule.hits == 1
    assert run.code == 0, run.stderr
    assert 'already completed' not in run.stderr
    assert 'is another one' in run.stderr if checksum == 'auto' else 'nothing proves the object' in run.stderr
    assert bucket_contents(seaweed, bucket) == {'big.bin': new}
    assert 'size' not in run.report['verified_by'] and run.report['files_transferred'] == 1
    assert unfinished_uploads(seaweed, bucket) == []


def test_an_upload_that_always_vanishes_fails_the_file_instead_of_reporting_the_old_object(seaweed, proxy, tool,
                                                                                          tmp_path):
    old, new = random_bytes(12 * MiB, 52), random_bytes(12 * MiB, 53)
    src = write_tree(tmp_path / 'src', {'big.bin': old})
    bucket = seaweed.bucket()
    settings = proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS, CompareMode='identity')
    assert tool.run(settings).code == 0
    (src / 'big.bin').write_bytes(new)
    proxy.add('status', 'POST', r'/big\.bin\?uploadId=', times=-1, status=404, code='NoSuchUpload')
    run = tool.run(settings)
    assert run.code == 1, run.stderr
    assert run.report['files_failed'] == 1 and run.report['files_transferred'] == 0
    assert 'is another one' in run.report['failures'][0]['error']
    assert unfinished_uploads(seaweed, bucket) == []


def test_a_completed_upload_whose_answer_was_lost_is_proven_by_its_checksum(seaweed, proxy, tool, tmp_path):
    """Complete applied, its answer cut off, the retry answered NoSuchUpload: the object proves it is ours."""
    data = random_bytes(12 * MiB, 54)
    src = write_tree(tmp_path / 'src', {'big.bin': data})
    bucket = seaweed.bucket()
    rules = [proxy.add('reset_response', 'POST', r'/big\.bin\?uploadId='),
             proxy.add('status', 'POST', r'/big\.bin\?uploadId=', status=404, code='NoSuchUpload')]
    run = tool.run(proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS))
    assert [rule.hits for rule in rules] == [1, 1] and run.code == 0, run.stderr
    assert 'already completed by an earlier attempt (its crc64nvme proves it)' in run.stderr, run.stderr
    assert run.report['parts_uploaded'] == 3          # nothing sent twice
    assert bucket_contents(seaweed, bucket) == {'big.bin': data}


def test_a_file_deleted_mid_upload_fails_and_leaves_no_upload_behind(seaweed, tool, tmp_path):
    data = random_bytes(40 * MiB, 55)
    src = write_tree(tmp_path / 'src', {'gone.bin': data, 'fine.txt': b'fine'})
    bucket = seaweed.bucket()
    process = tool.start(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=16,
                                       Concurrency='fixed', BandwidthLimit=10))
    assert wait_for_parts(seaweed, bucket, 'gone.bin', 1)
    (src / 'gone.bin').unlink()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err.decode()
    assert b'FAILED gone.bin: the file was deleted during the copy' in err
    assert bucket_contents(seaweed, bucket) == {'fine.txt': b'fine'}
    assert unfinished_uploads(seaweed, bucket) == []


def test_the_upload_of_a_file_deleted_after_a_kill_is_aborted_by_the_next_run(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'gone.bin': random_bytes(20 * MiB, 56), 'kept.txt': b'kept'})
    bucket = seaweed.bucket()
    settings = dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1)
    process = tool.start({**settings, 'BandwidthLimit': 2})
    assert wait_for_parts(seaweed, bucket, 'gone.bin', 1)
    process.kill()
    process.wait()
    (src / 'gone.bin').unlink()
    assert len(unfinished_uploads(seaweed, bucket)) == 1         # no run will ever list gone.bin again...
    run = tool.run(settings)
    assert run.code == 0, run.stderr
    assert 'gone.bin: aborted the unfinished upload an earlier run left (its source file is gone)' in run.stderr
    assert unfinished_uploads(seaweed, bucket) == []             # ...so this one cleans it up
    assert bucket_contents(seaweed, bucket) == {'kept.txt': b'kept'}


@pytest.fixture
def full_log_dir(tmp_path):
    """A LogDir on a file system with no space left (a tmpfs filled to the brim; needs root, as CI has)."""
    import subprocess
    mount = tmp_path / 'full'
    mount.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mount)]).returncode != 0:
        pytest.skip('cannot mount a tmpfs here')
    try:
        (mount / 'log').mkdir()
        try:
            with open(mount / 'filler', 'wb') as filler:
                while True:
                    filler.write(b'\0' * 4096)
                    filler.flush()
        except OSError:
            pass
        yield mount / 'log'
    finally:
        subprocess.run(['umount', '-l', str(mount)])


def test_a_full_log_dir_costs_resumability_not_the_transfer(seaweed, tool, tmp_path, full_log_dir):
    files = {'a.bin': random_bytes(12 * MiB, 57), 'b.bin': random_bytes(11 * MiB, 58), 'c.txt': b'small'}
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, LogDir=full_log_dir))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == files
    assert unfinished_uploads(seaweed, bucket) == []
    for noise in ('Traceback', 'Logging error', 'GeneratorExit', 'OSError'):
        assert noise not in run.stderr, run.stderr
    said = [line for line in run.stderr.splitlines() if 'No space left on device' in line]
    assert 1 <= len(said) <= 2 and all('LogDir is full' in line for line in said), run.stderr   # log file, journal


@pytest.mark.parametrize('status, code, said', [(403, 'InvalidAccessKeyId', 'refused the credentials'),
                                                 (404, 'NoSuchBucket', 'refused the bucket')])
def test_credentials_or_bucket_refused_mid_run_stop_the_run_with_one_line(status, code, said, seaweed, proxy, tool,
                                                                            tmp_path):
    """Keys revoked (or the bucket deleted) while the run goes on: every request would fail the same way, so the
    run stops (what is done stays done, the rest resumable) and says so once, not one FAILED line per file."""
    files = {f'f{i:03d}.txt': b'%d' % i for i in range(300)}
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    rule = proxy.add('status', 'PUT', r'/f\d+\.txt$', times=-1, status=status, code=code)
    run = tool.run(proxied(seaweed, proxy, bucket, SrcDir=src))
    assert run.code == 1, run.stderr
    assert 'FAILED' not in run.stderr and run.report['files_failed'] == 0
    stops = [line for line in run.stderr.splitlines() if f'{said} mid-run' in line]
    assert len(stops) == 2, run.stderr          # the log line, and the summary's last word
    assert run.report['stopped'] and code in run.report['halted']
    assert rule.hits < len(files)


def test_a_put_whose_answer_is_garbled_is_proven_by_the_objects_etag(seaweed, proxy, tool, tmp_path):
    """The PutObject's answer carries another ETag (a bad link, a bad proxy): the object's own ETag, asked by a
    HEAD, is the data's MD5, so the object is proven; nothing is sent twice."""
    src = write_tree(tmp_path / 'src', {'small.txt': b'small object body'})
    bucket = seaweed.bucket()
    rule = proxy.add('headers', 'PUT', r'/small\.txt$', headers={'ETag': '"' + '0' * 32 + '"'})
    run = tool.run(proxied(seaweed, proxy, bucket, SrcDir=src, ChecksumAlgorithm='none', UseCRT='never'))
    assert rule.hits == 1 and run.code == 0, run.stderr
    assert run.report['verified_by'] == {'etag': 1} and run.report['parts_uploaded'] == 1


def test_an_upload_that_cannot_be_aborted_when_given_up_is_aborted_by_the_next_run(seaweed, proxy, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'gone.bin': random_bytes(40 * MiB, 64), 'kept.txt': b'kept'})
    bucket = seaweed.bucket()
    settings = proxied(seaweed, proxy, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=16, Concurrency='fixed',
                       MaxRetry=1)
    proxy.add('status', 'DELETE', r'/gone\.bin\?uploadId=', times=-1, status=500, code='InternalError')
    process = tool.start({**settings, 'BandwidthLimit': 10})
    assert wait_for_parts(seaweed, bucket, 'gone.bin', 1)
    (src / 'gone.bin').unlink()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err.decode()
    assert b'gone.bin: cannot abort its unfinished upload now' in err and b'the next run does' in err
    assert len(unfinished_uploads(seaweed, bucket)) == 1
    proxy.clear()
    run = tool.run(settings)
    assert run.code == 0, run.stderr
    assert 'gone.bin: aborted the unfinished upload an earlier run left (given up on)' in run.stderr
    assert unfinished_uploads(seaweed, bucket) == []

"""The transfer engine end to end: uploads, multipart, resume after kill -9, verification, skip on rerun."""

from __future__ import annotations

import signal

import pytest

from conftest import (MiB, SMALL_PARTS, bucket_contents, dest_settings, leftover_upload, md5, parts_of, random_bytes,
                      s3_to_s3, unfinished_uploads, wait_for_parts, write_tree)



def test_folder_upload_is_byte_identical_and_rerun_skips(any_server, tool, tmp_path):
    files = {
        'a.txt': b'hello',
        'empty.bin': b'',
        'sub/dir/deep.bin': random_bytes(300_000, 1),
        '中文 目录/文件 name+plus%25.txt': b'unicode and odd characters',
        'big.bin': random_bytes(12 * MiB + 7, 2),     # multipart: 3 parts of 5 MiB
    }
    src = write_tree(tmp_path / 'src', files)
    (tmp_path / 'src' / 'empty-folder').mkdir()
    bucket = any_server.bucket()
    settings = dest_settings(any_server, bucket, SrcDir=src, S3Prefix='backup', **SMALL_PARTS)

    first = tool.run(settings)
    assert first.code == 0, first.stderr
    assert bucket_contents(any_server, bucket) == {f'backup/{k}': v for k, v in files.items()}
    report = first.report
    assert report['files_total'] == 5 and report['files_transferred'] == 5
    assert report['files_failed'] == 0 and report['failures'] == []
    assert report['bytes_total'] == sum(map(len, files.values()))
    assert report['bytes_transferred'] == report['bytes_total']
    assert report['parts_uploaded'] == 4 + 3
    assert unfinished_uploads(any_server, bucket) == []

    second = tool.run(settings)
    assert second.code == 0, second.stderr
    assert second.report['files_skipped'] == 5 and second.report['bytes_transferred'] == 0


def test_multipart_etag_is_verified(seaweed, tool, tmp_path):
    data = random_bytes(11 * MiB, 3)
    src = write_tree(tmp_path / 'src', {'f.bin': data})
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, ChecksumAlgorithm='none'))
    assert run.code == 0, run.stderr
    head = seaweed.client().head_object(Bucket=bucket, Key='f.bin')
    parts = [bytes.fromhex(md5(data[i:i + 5 * MiB])) for i in range(0, len(data), 5 * MiB)]
    import hashlib
    assert head['ETag'].strip('"') == hashlib.md5(b''.join(parts)).hexdigest() + '-3'
    assert run.report['verified_by'] == {'etag': 1}


@pytest.mark.parametrize('server_name', ['seaweed', 'moto'])
def test_a_completed_upload_is_verified_by_the_completes_answer_else_by_a_head(server_name, request, tool, tmp_path):
    """Round trips count on long links: SeaweedFS answers CompleteMultipartUpload with the object's
    CRC64NVME, which proves the parts were joined as listed, and moto with the ETag the parts' MD5s make:
    no HEAD follows either."""
    from fault_proxy import FaultProxy
    server = request.getfixturevalue(server_name)
    data = random_bytes(11 * MiB, 4)
    src = write_tree(tmp_path / 'src', {'f.bin': data})
    bucket = server.bucket()
    proxy = FaultProxy(server.endpoint)
    try:
        run = tool.run(dest_settings(server, bucket, SrcDir=src, **SMALL_PARTS, ChecksumAlgorithm='CRC64NVME',
                                     DesEndPointURL=proxy.endpoint))
    finally:
        proxy.stop()
    assert run.code == 0, run.stderr
    assert bucket_contents(server, bucket) == {'f.bin': data}
    heads = [target for method, target, _ in proxy.agents if method == 'HEAD' and 'f.bin' in target]
    assert heads == [], heads
    assert run.report['verified_by'] == ({'crc64nvme': 1} if server_name == 'seaweed' else {'etag': 1}), run.report


def test_single_file_selected_by_srcfileindex(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'keep/me.txt': b'me', 'other.txt': b'other'})
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, SrcFileIndex='keep/me.txt', S3Prefix='p'))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == {'p/keep/me.txt': b'me'}


def test_list_parts_pagination_on_resume(any_server, tool, tmp_path):
    """An upload with more parts than one ListParts page is resumed with every part reused."""
    data = random_bytes(31 * MiB, 4)   # 7 parts of 5 MiB; pages of 2 parts
    src = write_tree(tmp_path / 'src', {'paged.bin': data})
    bucket = any_server.bucket()
    client = any_server.client()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key='paged.bin')['UploadId']
    for number in (1, 2, 3, 4, 5):
        client.upload_part(Bucket=bucket, Key='paged.bin', UploadId=upload_id, PartNumber=number,
                           Body=data[(number - 1) * 5 * MiB:number * 5 * MiB])
    run = tool.run(dest_settings(any_server, bucket, SrcDir=src, **SMALL_PARTS, ListPageSize=2))
    assert run.code == 0, run.stderr
    assert run.report['parts_resumed'] == 5 and run.report['parts_uploaded'] == 2
    assert run.report['bytes_resumed'] == 25 * MiB
    assert run.report['bytes_transferred'] == 6 * MiB
    assert bucket_contents(any_server, bucket) == {'paged.bin': data}
    assert unfinished_uploads(any_server, bucket) == []


@pytest.mark.parametrize('server_name', ['seaweed', 'moto'])
def test_kill_9_mid_multipart_then_resume(server_name, request, tool, tmp_path):
    server = request.getfixturevalue(server_name)
    data = random_bytes(60 * MiB + 123, 5)   # 13 parts of 5 MiB
    src = write_tree(tmp_path / 'src', {'movie.bin': data})
    bucket = server.bucket()
    threads = 3
    settings = dest_settings(server, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=threads, BandwidthLimit=12)
    process = tool.start(settings)
    wait_for_parts(server, bucket, 'movie.bin', 4)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = parts_of(server, bucket, 'movie.bin')
    assert 4 <= len(before) < 13, 'the kill should land in the middle of the upload'

    settings['BandwidthLimit'] = 0
    run = tool.run(settings)
    assert run.code == 0, run.stderr
    report = run.report
    # Kept: every listed part but those whose answer the kill cut off (at most the parts in flight).
    assert len(before) - threads <= report['parts_resumed'] <= len(before)
    assert report['bytes_resumed'] == report['parts_resumed'] * 5 * MiB
    assert report['bytes_transferred'] == len(data) - report['bytes_resumed']
    assert report['parts_uploaded'] + report['parts_resumed'] == 13
    assert bucket_contents(server, bucket) == {'movie.bin': data}
    assert unfinished_uploads(server, bucket) == []


def test_resume_without_journal_rehashes_local_parts(seaweed, tool, tmp_path):
    """Parts left by another run (no journal entry) are kept only when their MD5 matches the file."""
    data = random_bytes(20 * MiB, 6)
    src = write_tree(tmp_path / 'src', {'x.bin': data})
    bucket = seaweed.bucket()
    leftover_upload(seaweed, bucket, 'x.bin', {1: data[:5 * MiB], 2: b'\0' * (5 * MiB)})  # 2: same size, wrong content
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS))
    assert run.code == 0, run.stderr
    assert run.report['parts_resumed'] == 1 and run.report['parts_uploaded'] == 3
    assert bucket_contents(seaweed, bucket) == {'x.bin': data}


def test_rehashed_parts_count_as_acknowledged_after_another_kill(seaweed, tool, tmp_path):
    """Parts proven by re-hashing (no journal entry) are journaled: a run killed after that keeps them."""
    data = random_bytes(30 * MiB, 7)
    src = write_tree(tmp_path / 'src', {'x.bin': data})
    bucket = seaweed.bucket()
    leftover_upload(seaweed, bucket, 'x.bin', {1: data[:5 * MiB], 2: data[5 * MiB:10 * MiB]})
    settings = dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1, BandwidthLimit=2)
    process = tool.start(settings)
    assert len(wait_for_parts(seaweed, bucket, 'x.bin', 3)) >= 3
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = tool.run({**settings, 'BandwidthLimit': 0})
    assert run.code == 0, run.stderr
    assert run.report['parts_resumed'] >= 2 and run.report['parts_resumed'] + run.report['parts_uploaded'] == 6
    assert bucket_contents(seaweed, bucket) == {'x.bin': data}


def test_source_changed_between_runs_is_not_mixed(seaweed, tool, tmp_path):
    data = random_bytes(20 * MiB, 7)
    src = write_tree(tmp_path / 'src', {'c.bin': data})
    bucket = seaweed.bucket()
    settings = dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1, BandwidthLimit=8)
    process = tool.start(settings)
    wait_for_parts(seaweed, bucket, 'c.bin', 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert parts_of(seaweed, bucket, 'c.bin')
    changed = bytearray(data)
    changed[100] ^= 0xFF              # part 1 differs now, same size
    (src / 'c.bin').write_bytes(bytes(changed))
    settings['BandwidthLimit'] = 0
    run = tool.run(settings)
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == {'c.bin': bytes(changed)}
    assert unfinished_uploads(seaweed, bucket) == []


def test_chunk_size_changed_between_runs_resumes_with_the_uploads_part_size(seaweed, tool, tmp_path):
    data = random_bytes(30 * MiB, 8)
    src = write_tree(tmp_path / 'src', {'d.bin': data})
    bucket = seaweed.bucket()
    leftover_upload(seaweed, bucket, 'd.bin', {1: data[:6 * MiB], 2: data[6 * MiB:12 * MiB]})
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS))
    assert run.code == 0, run.stderr
    assert run.report['parts_resumed'] == 2 and run.report['bytes_resumed'] == 12 * MiB
    assert bucket_contents(seaweed, bucket) == {'d.bin': data}


def test_stale_upload_that_cannot_fit_is_aborted_and_other_keys_untouched(seaweed, tool, tmp_path):
    data = random_bytes(12 * MiB, 9)
    src = write_tree(tmp_path / 'src', {'a.bin': data})
    bucket = seaweed.bucket()
    leftover_upload(seaweed, bucket, 'a.bin', {1: b'x' * (7 * MiB + 1)})
    other = leftover_upload(seaweed, bucket, 'a.bin.bak', {})
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS))
    assert run.code == 0, run.stderr
    assert run.report['parts_resumed'] == 0
    assert bucket_contents(seaweed, bucket) == {'a.bin': data}
    assert [(u['Key'], u['UploadId']) for u in unfinished_uploads(seaweed, bucket)] == [('a.bin.bak', other)]


def test_prefix_names_a_folder_not_a_string_prefix(seaweed, tool, tmp_path):
    """S3Prefix 'data' must not treat 'database/x' as already uploaded."""
    src = write_tree(tmp_path / 'src', {'x': b'12345'})
    bucket = seaweed.bucket()
    seaweed.client().put_object(Bucket=bucket, Key='database/x', Body=b'abcde')
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, S3Prefix='data'))
    assert run.code == 0, run.stderr
    assert run.report['files_transferred'] == 1
    assert bucket_contents(seaweed, bucket)['data/x'] == b'12345'


def test_broken_upload_paging_still_leaves_no_leftovers(seaweed, tool, tmp_path):
    """SeaweedFS answers paged ListMultipartUploads with IsTruncated and no marker: no endless loop,
    and every stale upload of the key is gone once the object is complete."""
    data = random_bytes(11 * MiB, 13)
    src = write_tree(tmp_path / 'src', {'m.bin': data})
    bucket = seaweed.bucket()
    client = seaweed.client()
    for _ in range(3):
        client.create_multipart_upload(Bucket=bucket, Key='m.bin')
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, ListPageSize=1), timeout=120)
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == {'m.bin': data}
    assert unfinished_uploads(seaweed, bucket) == []


def test_upload_dropped_mid_transfer_restarts_the_file(seaweed, tool, tmp_path):
    data = random_bytes(40 * MiB, 14)
    src = write_tree(tmp_path / 'src', {'gone.bin': data})
    bucket = seaweed.bucket()
    process = tool.start(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=2, BandwidthLimit=10))
    assert wait_for_parts(seaweed, bucket, 'gone.bin', 2)
    client = seaweed.client()
    for upload in client.list_multipart_uploads(Bucket=bucket).get('Uploads', []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload['Key'], UploadId=upload['UploadId'])
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert b'dropped the multipart upload' in err
    assert bucket_contents(seaweed, bucket) == {'gone.bin': data}


@pytest.mark.parametrize('server_name', ['seaweed', 'moto'])
def test_server_side_copy_moves_no_bytes_through_the_machine(server_name, request, tool):
    server = request.getfixturevalue(server_name)
    src_bucket, dst_bucket = server.bucket('src'), server.bucket('dst')
    objects = {'a.txt': b'small', 'zero': b'', 'big.bin': random_bytes(13 * MiB + 1, 20)}
    client = server.client()
    for key, data in objects.items():
        client.put_object(Bucket=src_bucket, Key=key, Body=data)
    run = tool.run(s3_to_s3(server, src_bucket, server, dst_bucket, **SMALL_PARTS))
    assert run.code == 0, run.stderr
    assert run.report['bytes_transferred'] == 0
    assert run.report['bytes_copied_server_side'] == sum(map(len, objects.values()))
    assert bucket_contents(server, dst_bucket) == objects
    assert unfinished_uploads(server, dst_bucket) == []


def test_server_side_copy_falls_back_when_the_store_copies_parts_wrong(rclone, tool):
    """rclone serve s3 answers UploadPartCopy with empty parts: detected, and the object is streamed."""
    src_bucket, dst_bucket = rclone.bucket('src'), rclone.bucket('dst')
    objects = {'small.txt': b'small', 'big.bin': random_bytes(11 * MiB, 21)}
    for key, data in objects.items():
        rclone.client().put_object(Bucket=src_bucket, Key=key, Body=data)
    run = tool.run(s3_to_s3(rclone, src_bucket, rclone, dst_bucket, **SMALL_PARTS))
    assert run.code == 0, run.stderr
    assert 'server-side copy is not possible here' in run.stderr
    assert bucket_contents(rclone, dst_bucket) == objects
    assert run.report['bytes_transferred'] >= 11 * MiB
    assert unfinished_uploads(rclone, dst_bucket) == []     # not even the server-side attempt's


def test_server_side_copy_falls_back_on_access_denied(seaweed, tool):
    """Destination credentials that may not read the source bucket: stream with the source's own."""
    from conftest import ISOLATED_BUCKET
    try:
        seaweed.client().create_bucket(Bucket=ISOLATED_BUCKET)
    except Exception:
        pass
    src_bucket = seaweed.bucket('src')
    data = random_bytes(7 * MiB, 22)
    seaweed.client().put_object(Bucket=src_bucket, Key='x.bin', Body=data)
    prefix = f'run-{random_bytes(4, 23).hex()}'
    settings = s3_to_s3(seaweed, src_bucket, seaweed, ISOLATED_BUCKET, DesProfileName='seaweed_isolated',
                         S3Prefix=prefix, SrcPrefix='', **SMALL_PARTS)
    run = tool.run(settings)
    assert run.code == 0, run.stderr
    assert 'server-side copy is not possible here' in run.stderr
    assert bucket_contents(seaweed, ISOLATED_BUCKET, prefix + '/') == {f'{prefix}/x.bin': data}
    assert run.report['bytes_transferred'] == len(data)
    assert [u['Key'] for u in unfinished_uploads(seaweed, ISOLATED_BUCKET) if u['Key'].startswith(prefix)] == []


def test_compare_mode_identity_and_checksum(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'same.txt': b'aaaa', 'touched.txt': b'bbbb', 'sneaky.bin': random_bytes(11 * MiB, 24)})
    bucket = seaweed.bucket()
    base = dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS)
    assert tool.run(base).code == 0
    # touched.txt: same size, new content and mtime. sneaky.bin: new content, same size, old mtime restored.
    (src / 'touched.txt').write_bytes(b'BBBB')
    stat = (src / 'sneaky.bin').stat()
    sneaky = bytearray((src / 'sneaky.bin').read_bytes())
    sneaky[6 * MiB] ^= 0xFF
    (src / 'sneaky.bin').write_bytes(bytes(sneaky))
    import os
    os.utime(src / 'sneaky.bin', ns=(stat.st_atime_ns, stat.st_mtime_ns))
    size_run = tool.run(base)
    assert size_run.report['files_skipped'] == 3           # size alone cannot tell
    identity_run = tool.run({**base, 'CompareMode': 'identity'})
    assert identity_run.code == 0
    assert identity_run.report['files_transferred'] == 1 and identity_run.report['files_skipped'] == 2
    assert bucket_contents(seaweed, bucket)['touched.txt'] == b'BBBB'
    checksum_run = tool.run({**base, 'CompareMode': 'checksum'})
    assert checksum_run.code == 0
    assert checksum_run.report['files_transferred'] == 1 and checksum_run.report['files_skipped'] == 2
    assert bucket_contents(seaweed, bucket)['sneaky.bin'] == bytes(sneaky)
    assert tool.run({**base, 'CompareMode': 'checksum'}).report['files_skipped'] == 3


def test_compare_mode_identity_for_s3_sources(moto, seaweed, tool):
    src_bucket, dst_bucket = moto.bucket(), seaweed.bucket()
    client = moto.client()
    client.put_object(Bucket=src_bucket, Key='k', Body=b'1111')
    settings = s3_to_s3(moto, src_bucket, seaweed, dst_bucket, CompareMode='identity')
    assert tool.run(settings).code == 0
    assert tool.run(settings).report['files_skipped'] == 1
    client.put_object(Bucket=src_bucket, Key='k', Body=b'2222')     # same size, other ETag
    run = tool.run(settings)
    assert run.report['files_transferred'] == 1
    assert bucket_contents(seaweed, dst_bucket) == {'k': b'2222'}


def test_a_file_of_exactly_the_threshold_goes_in_one_put(seaweed, tool, tmp_path):
    """ResumableThreshold (= ChunkSize here) is the largest single PutObject: a one-part multipart upload
    would cost two more round trips and resume nothing."""
    files = {'at.bin': random_bytes(5 * MiB, 1), 'over.bin': random_bytes(5 * MiB + 1, 2)}
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=write_tree(tmp_path / 'src', files), **SMALL_PARTS))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == files
    client = seaweed.client()
    assert '-' not in client.head_object(Bucket=bucket, Key='at.bin')['ETag']
    assert client.head_object(Bucket=bucket, Key='over.bin')['ETag'].strip('"').endswith('-2')
    assert run.report['parts_uploaded'] == 1 + 2


def test_by_default_files_up_to_64_mib_go_in_one_put(seaweed, tool, tmp_path):
    """Without ResumableThreshold, files up to 64 MiB go in one PutObject (a multipart upload costs a store
    that joins parts by copying them more), larger ones in parts of ChunkSize (8 MiB)."""
    files = {'mid.bin': random_bytes(20 * MiB, 3), 'at.bin': random_bytes(64 * MiB, 4),
             'over.bin': random_bytes(64 * MiB + 1, 5)}
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=write_tree(tmp_path / 'src', files)))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == files
    client = seaweed.client()
    assert '-' not in client.head_object(Bucket=bucket, Key='mid.bin')['ETag']
    assert '-' not in client.head_object(Bucket=bucket, Key='at.bin')['ETag']
    assert client.head_object(Bucket=bucket, Key='over.bin')['ETag'].strip('"').endswith('-9')
    assert run.report['parts_uploaded'] == 2 + 9


# The in-flight window (Concurrency = auto) and the memory budget it moves ###

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def window_of(limit: int, files: int = 1024):
    """A window over a real memory budget of `limit` bytes and a gate of at most `files` files, on a
    clock the test moves."""
    import threading
    from s3_upload import FileGate, InFlightWindow, MemoryBudget
    memory = MemoryBudget(limit, threading.Event())
    clock = Clock()
    window = InFlightWindow(memory, limit, FileGate(files, threading.Event()), files, clock)
    return window, memory, clock


def second(window, memory, clock, rate_mb: float, limited: bool = True, errors: bool = False) -> int:
    """One measured second; returns the window after it, in multiples of its start."""
    clock.now += 1
    memory.waited = limited
    window.tick(rate_mb * 1e6, errors)
    return memory.limit / window.start_bytes


def test_window_doubles_while_throughput_rises_like_slow_start():
    from s3_upload import InFlightWindow
    window, memory, clock = window_of(8 * InFlightWindow.START_BYTES_FAR)
    assert memory.limit == window.start_bytes
    seen = [second(window, memory, clock, rate) for rate in (10, 10, 20, 20, 40, 40, 80)]
    # a second after each change is skipped; every doubling that paid is followed by the next one
    assert seen == [1, 2, 2, 4, 4, 8, 8]


def test_window_steps_back_when_a_doubling_does_not_pay_and_tries_again_after_a_rest():
    from s3_upload import InFlightWindow
    window, memory, clock = window_of(8 * InFlightWindow.START_BYTES_FAR)
    assert [second(window, memory, clock, rate) for rate in (70, 70, 70, 75)] == [1, 2, 2, 1]
    assert [second(window, memory, clock, 70) for _ in range(10)] == [1] * 10       # resting
    clock.now += window.REST
    assert second(window, memory, clock, 70) == 2                                    # probes again


def test_window_grows_only_when_it_held_data_back_and_halves_on_errors():
    from s3_upload import InFlightWindow
    window, memory, clock = window_of(8 * InFlightWindow.START_BYTES_FAR)
    assert [second(window, memory, clock, 10, limited=False) for _ in range(4)] == [1] * 4
    assert second(window, memory, clock, 10) == 2
    assert [second(window, memory, clock, 20, errors=True) for _ in range(5)] == [1, 0.5, 0.25, 0.25, 0.25]


def test_window_waits_while_the_rate_still_climbs_at_the_window_it_has():
    """Connections opening and TCP slow start raise the rate at any window: no doubling is decided then."""
    from s3_upload import InFlightWindow
    window, memory, clock = window_of(8 * InFlightWindow.START_BYTES_FAR)
    assert [second(window, memory, clock, rate) for rate in (0, 1, 5, 20, 21)] == [1, 1, 1, 1, 2]
    # the doubling is judged once the rate settles (30 against 21: it paid), not while it climbs (20)
    assert [second(window, memory, clock, rate) for rate in (10, 20, 30, 30)] == [2, 2, 2, 4]


@pytest.mark.parametrize('limited', [True, False])
def test_a_doubling_up_to_the_ceiling_is_taken_back_when_it_does_not_pay(limited):
    """At MemoryLimit and MaxParallelFile nothing waits for the window any more (the thread pool is the
    limit): whether the last doubling paid is still judged."""
    from s3_upload import InFlightWindow
    window, memory, clock = window_of(2 * InFlightWindow.START_BYTES_FAR, files=2 * InFlightWindow.START_FILES)
    assert [second(window, memory, clock, 20) for _ in range(3)] == [1, 2, 2]
    assert (memory.limit, window.files.limit) == (2 * window.start_bytes, 2 * window.START_FILES)
    assert second(window, memory, clock, 20, limited=limited) == 1
    assert window.files.limit == window.START_FILES


def test_window_never_exceeds_memory_limit():
    from s3_upload import InFlightWindow
    window, memory, clock = window_of(InFlightWindow.START_BYTES_FAR * 3 // 2)
    assert [second(window, memory, clock, rate) for rate in (10, 10, 20, 20)] == [1, 1.5, 1.5, 1.5]
    small, memory, clock = window_of(16 * MiB)          # MemoryLimit below the start: the limit throughout
    assert memory.limit == 16 * MiB


def test_window_moves_the_files_in_flight_with_the_bytes_up_to_max_parallel_file():
    """Small files on a long link: the files gate, not the bytes, holds them back; those seconds count."""
    from s3_upload import InFlightWindow
    window, memory, clock = window_of(2 * InFlightWindow.START_BYTES_FAR, files=4 * InFlightWindow.START_FILES)
    files = window.files
    assert (memory.limit, files.limit) == (window.start_bytes, window.START_FILES)

    def files_second(rate_mb: float, errors: bool = False) -> float:
        clock.now += 1
        files.waited = True                     # a file waited for its turn; the bytes never did
        window.tick(rate_mb * 1e6, errors)
        return files.limit / window.START_FILES

    assert [files_second(rate) for rate in (1, 1, 2, 2, 4, 4)] == [1, 2, 2, 4, 4, 4]
    assert memory.limit == 2 * window.start_bytes          # the bytes stopped at MemoryLimit, the files went on
    assert [files_second(4, errors=True) for _ in range(4)] == [2, 1, 0.5, 0.25]


def test_window_starts_with_as_many_files_as_the_round_trip_needs():
    from s3_upload import InFlightWindow
    assert InFlightWindow.files_to_start(None) == InFlightWindow.files_to_start(0.002) == InFlightWindow.START_FILES
    assert InFlightWindow.files_to_start(0.1) == 256 and InFlightWindow.files_to_start(0.25) == 640


def test_a_round_trip_measured_once_files_are_in_flight_sets_the_start_unless_the_window_moved():
    """A short job's first writes leave before its listing has measured the round trip."""
    from s3_upload import InFlightWindow
    window, memory, clock = window_of(1024 * MiB)
    assert window.files.limit == InFlightWindow.START_FILES
    window.measured(0.1)
    assert window.files.limit == 256 and memory.limit == 256 * MiB
    moved, moved_memory, clock = window_of(1024 * MiB)
    assert [second(moved, moved_memory, clock, 10) for _ in range(2)] == [1, 2]        # it doubled
    moved.measured(0.1)
    assert moved.files.limit == 2 * InFlightWindow.START_FILES


def test_window_starts_with_little_data_in_flight_when_the_store_is_near():
    """A store on this machine's cores is faster with little in flight; a long link needs a lot (both grow)."""
    from s3_upload import InFlightWindow
    start = InFlightWindow.bytes_to_start
    assert start(0.002) == start(0.02) == 64 * MiB
    assert start(0.05) == 128 * MiB
    assert start(0.1) == start(0.25) == start(None) == 256 * MiB       # unknown: as before the probe existed


def test_file_gate_lets_limit_files_through_and_follows_resizes():
    """The planner takes a turn per file, the file's worker gives it back when the file is done."""
    import threading
    import time
    from s3_upload import FileGate, Stopped
    stop = threading.Event()
    gate = FileGate(2, stop)
    inside, most = [0], [0]
    lock = threading.Lock()

    def one_file() -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        gate.release()

    def planner() -> None:
        for _ in range(8):
            gate.acquire()
            threading.Thread(target=one_file).start()

    planning = threading.Thread(target=planner)
    planning.start()
    time.sleep(0.02)
    gate.resize(4)                               # the waiting planner gets the new room at once
    planning.join()
    deadline = time.monotonic() + 5
    while gate.used and time.monotonic() < deadline:
        time.sleep(0.01)
    assert most[0] == 4 and gate.waited and gate.used == 0
    gate.acquire()
    stop.set()
    with pytest.raises(Stopped):
        gate.acquire()                           # room left, but the run stopped: no more files start
    assert gate.used == 1


def test_two_whole_files_go_at_once_in_a_window_too_small_for_them():
    """A file sent in one request asks for at most half the window, while two whole ones fit in MemoryLimit."""
    import threading
    from s3_upload import MemoryBudget
    memory = MemoryBudget(512 * MiB, threading.Event())
    memory.resize(64 * MiB)                       # the window at its start on a LAN
    assert memory.whole_file(48 * MiB) == 32 * MiB and memory.whole_file(20 * MiB) == 20 * MiB
    first, second = memory.take(memory.whole_file(48 * MiB)), memory.take(memory.whole_file(48 * MiB))
    assert memory.used == 64 * MiB and not memory.waited
    memory.give(first), memory.give(second)
    memory.resize(512 * MiB)
    assert memory.whole_file(48 * MiB) == 48 * MiB                  # a grown window holds the whole file
    assert MemoryBudget(64 * MiB, threading.Event()).whole_file(48 * MiB) == 48 * MiB   # two do not fit


def test_memory_budget_serves_waiters_in_order_and_follows_resizes():
    import threading
    import time
    from s3_upload import MemoryBudget, Stopped
    stop = threading.Event()
    memory = MemoryBudget(10, stop)
    order = []

    def take(name: str, nbytes: int) -> None:
        with memory.hold(nbytes):
            order.append(name)
            time.sleep(0.05)

    with memory.hold(8):
        big = threading.Thread(target=take, args=('big', 6))
        big.start()
        time.sleep(0.1)
        small = threading.Thread(target=take, args=('small', 5))      # queued behind big
        small.start()
        time.sleep(0.1)
        assert order == [] and memory.waited
    big.join(), small.join()
    assert order == ['big', 'small'] and memory.used == 0

    memory.resize(160)                            # small (up to a sixteenth of the limit): passes a big waiter
    order.clear()
    with memory.hold(150):
        big = threading.Thread(target=take, args=('big', 20))
        big.start()
        time.sleep(0.1)
        small = threading.Thread(target=take, args=('small', 10))
        small.start()
        small.join(timeout=5)
        assert order == ['small']
    big.join()
    assert order == ['small', 'big'] and memory.used == 0

    memory.resize(4)
    with memory.hold(4):
        assert memory.used == 4
        memory.resize(8)
        with memory.hold(4):                      # room made by the larger limit
            assert memory.used == 8
    stop.set()
    with memory.hold(8):
        with pytest.raises(Stopped):
            with memory.hold(1):
                pass
    assert memory.used == 0


@pytest.mark.parametrize('concurrency', ['auto', 'fixed'])
def test_small_files_behind_a_slow_store_get_more_files_in_flight_in_auto_mode(concurrency, seaweed, tool, tmp_path):
    """Each PUT answered 0.2 s late (a long link's round trip): Concurrency = auto lets more files than
    it starts with into flight, never more than MaxParallelFile; fixed holds MaxParallelFile throughout."""
    from fault_proxy import FaultProxy
    from s3_upload import InFlightWindow
    fixed, most = InFlightWindow.START_FILES, 200
    files = {f'f{i:04d}.txt': f'{i}'.encode() for i in range(1500)}
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    proxy = FaultProxy(seaweed.endpoint)
    proxy.add('delay', 'PUT', r'/f\d+\.txt', times=-1, seconds=0.2)
    try:
        run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, DesEndPointURL=proxy.endpoint, LoggingLevel='DEBUG',
                                     Concurrency=concurrency, MaxParallelFile=most if concurrency == 'auto' else fixed))
    finally:
        proxy.stop()
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == files
    early = most_at_once_at_first(proxy)
    if concurrency == 'auto':
        start = files_at_the_start(tool)
        assert early <= start < proxy.peak <= most, (early, start, proxy.peak)
    else:
        assert fixed - 8 <= early <= proxy.peak <= fixed, (early, proxy.peak)


def test_a_store_a_long_round_trip_away_gets_many_files_in_flight_from_the_start(seaweed, tool, tmp_path):
    """Every request answered 0.1 s late, the write check's too (and the files' PUTs 1 s late, so that
    many are in flight at once even on a busy machine): the run starts with the files that round trip
    needs (Little's law), not with the few a store on this machine is fastest with."""
    from fault_proxy import FaultProxy
    from s3_upload import InFlightWindow
    files = {f'f{i:04d}.txt': f'{i}'.encode() for i in range(600)}
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    proxy = FaultProxy(seaweed.endpoint)
    proxy.add('delay', 'PUT', r'/f\d+\.txt', times=-1, seconds=1.0)
    proxy.add('delay', None, None, times=-1, seconds=0.1)
    try:
        run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, DesEndPointURL=proxy.endpoint, LoggingLevel='DEBUG'))
    finally:
        proxy.stop()
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == files
    start = files_at_the_start(tool)
    assert InFlightWindow.files_to_start(0.1) <= start
    # (+ 1: the write check's upload is aborted beside the first files, and that request is delayed too)
    assert 2 * InFlightWindow.START_FILES < most_at_once_at_first(proxy, seconds=1.0) <= start + 1


def most_at_once_at_first(proxy, seconds: float = 0.5) -> int:
    """The most requests the proxy handled at once in the first seconds after the first file's PUT."""
    first = min(t for t, (_, target, _) in zip(proxy.arrivals, proxy.agents) if target.endswith('.txt'))
    return max(n for t, n in zip(proxy.arrivals, proxy.at_once) if t < first + seconds)


def files_at_the_start(tool) -> int:
    """The files in flight the run's window started with, from its log (LoggingLevel = DEBUG)."""
    import re
    log = '\n'.join(path.read_text() for path in (tool.folder / 'log').glob('s3_upload-*.log'))
    return int(re.search(r'in flight: .* in (\d+) files at the start', log).group(1))


def assert_small_ones_finished_without_a_worker(tool, keys, without: bool) -> None:
    """From the run's DEBUG log: every key was finished, big.bin (multipart) by a worker thread, the others
    by the lanes' answers (without a worker) or all by workers."""
    import re
    log = '\n'.join(path.read_text() for path in (tool.folder / 'log').glob('s3_upload-*.log'))
    done_by = {key: thread for thread, key in re.findall(r' (?:DEBUG|INFO) (\S+) done (\S+) \(', log)}
    assert set(done_by) == set(keys)
    assert done_by['big.bin'].startswith('file')
    small = [thread for key, thread in done_by.items() if key != 'big.bin']
    assert not any(thread.startswith('file') for thread in small) if without else \
        all(thread.startswith('file') for thread in small), small


@pytest.mark.parametrize('use_crt', ['auto', 'never'])
def test_small_local_files_are_finished_by_the_lanes_answers_not_a_thread_each(use_crt, seaweed, tool, tmp_path):
    """Through the awscrt lane the planner reads a small file and hands it on; the lane's answer proves and
    counts it (on awscrt's thread): no worker thread carries it. Without the lane the workers do it all.
    Either way every byte arrives and each file is verified."""
    files = {f'd{i % 7}/f{i:03d}.txt': random_bytes(i * 37, i) for i in range(300)}
    files['big.bin'] = random_bytes(6 * MiB, 1)
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=write_tree(tmp_path / 'src', files), LoggingLevel='DEBUG',
                                 **SMALL_PARTS, UseCRT=use_crt))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == files
    assert run.report['files_transferred'] == len(files) and sum(run.report['verified_by'].values()) == len(files)
    assert_small_ones_finished_without_a_worker(tool, files, use_crt == 'auto')


@pytest.mark.parametrize('use_crt', ['auto', 'never'])
def test_small_s3_objects_go_from_lane_to_lane_not_a_thread_each(use_crt, seaweed, moto, tool):
    """S3 -> S3 between two stores: the planner starts a small object's GET on the source's awscrt lane, its
    answer starts the PUT on the destination's, and that answer proves and counts the object; no worker
    thread carries it. A multipart object is a worker's; without the lanes the workers do it all. Every
    byte is the source's, each object verified."""
    objects = {f'd{i % 5}/o{i:03d}': random_bytes(i * 53, i) for i in range(120)}
    objects['big.bin'] = random_bytes(6 * MiB, 2)
    src, dst = seaweed.bucket('src'), moto.bucket()
    for key, body in objects.items():
        seaweed.client().put_object(Bucket=src, Key=key, Body=body)
    run = tool.run(s3_to_s3(seaweed, src, moto, dst, LoggingLevel='DEBUG', **SMALL_PARTS,
                            UseCRT=use_crt))
    assert run.code == 0, run.stderr
    assert bucket_contents(moto, dst) == objects
    assert run.report['files_transferred'] == len(objects) and sum(run.report['verified_by'].values()) == len(objects)
    assert_small_ones_finished_without_a_worker(tool, objects, use_crt == 'auto')


def proof_of(datas, checksum=True, etags=None, source_crc='', etags_known=True):
    """An ObjectProof of parts holding these bytes, sent with CRC64NVME (or not) and MD5s hashed here."""
    import hashlib
    from s3_upload import Checksum, ObjectProof, PartDone
    crc = Checksum('CRC64NVME') if checksum else None
    parts = [PartDone(n, len(data), (etags or {}).get(n, hashlib.md5(data).hexdigest()), hashlib.md5(data).digest(),
                      crc.of(data) if crc else None, hashed=True) for n, data in enumerate(datas, 1)]
    return ObjectProof(parts, sum(map(len, datas)), crc, source_crc, etags_known=etags_known), crc


def test_a_proof_accepts_what_fits_the_parts_and_refuses_what_contradicts_them():
    import base64
    import hashlib
    from s3_upload import NotOurs, multipart_etag
    datas = [b'a' * 100, b'b' * 50]
    proof, crc = proof_of(datas)
    whole = base64.b64encode(crc.of(b''.join(datas))).decode()
    other = base64.b64encode(crc.of(b'c' * 150)).decode()
    etag = multipart_etag([hashlib.md5(d).digest() for d in datas])
    assert proof.judge(f'"{etag}"', {'CRC64NVME': whole}, 150) == 'crc64nvme'
    assert proof.judge(f'"{etag}"', {}) == 'etag'
    assert proof.judge('"0123"', {}) == ''                        # nothing to tell by: the caller asks a HEAD
    for etag_there, checksums, size in ((etag, {'CRC64NVME': other}, 150), (etag, {}, 151),
                                        ('0' * 32 + '-2', {}, 150)):
        with pytest.raises(NotOurs):
            proof.judge(etag_there, checksums, size)


def test_a_proof_uses_etags_only_where_the_store_showed_they_are_md5s():
    """SSE-KMS: part ETags are no MD5s, so an object ETag that is not the parts' MD5s contradicts nothing."""
    proof, _ = proof_of([b'a' * 100, b'b' * 50], checksum=False, etags={1: 'f' * 32, 2: 'e' * 32})
    assert proof.judge('"' + '0' * 32 + '-2"', {}, 150) == ''


def test_a_proof_compares_the_stores_crc64nvme_with_the_sources():
    import base64
    from s3_upload import NotOurs
    proof, crc = proof_of([b'x' * 10], checksum=False, source_crc=base64.b64encode(b'\0' * 8).decode())
    assert proof.judge('', {'CRC64NVME': base64.b64encode(b'\0' * 8).decode()}) == 'crc64nvme'
    with pytest.raises(NotOurs):
        proof.judge('', {'CRC64NVME': base64.b64encode(b'\1' * 8).decode()})


def reuse_case(size=12 * MiB, verify=False, rereads=False):
    from s3_upload import PartReuse, SourceObject
    obj = SourceObject('f.bin', size, '111', '/src/f.bin')
    return PartReuse(obj, 5 * MiB, verify, rereads), obj


def listed(*numbers, size=5 * MiB, etag=lambda n: f'{n:032x}'):
    from s3_upload import Part
    return [Part(n, size if n < 3 else 2 * MiB, f'"{etag(n)}"') for n in numbers]


def test_parts_the_store_acknowledged_to_us_are_kept_and_the_others_proven_by_reading():
    reuse, obj = reuse_case()
    entry = {'identity': obj.identity, 'part_size': 5 * MiB, 'parts': {1: f'{1:032x}', 2: 'f' * 32}, 'checksums': {}}
    decision = reuse.decide(listed(1, 2, 3), entry)
    assert not decision.discard and decision.acknowledged and decision.part_size == 5 * MiB
    assert list(decision.kept) == [1]                                   # 2 listed otherwise than acknowledged
    assert [part.number for part in decision.to_prove] == [2, 3]       # 3 never acknowledged: read again


def test_an_upload_of_another_source_version_is_proven_by_reading_or_discarded():
    reuse, obj = reuse_case()
    other = {'identity': obj.identity + 'x', 'part_size': 5 * MiB, 'parts': {1: f'{1:032x}'}}
    assert 'no journal entry proves' in reuse.decide(listed(1, 2), other).discard       # an S3 source
    local, _ = reuse_case(rereads=True)
    decision = local.decide(listed(1, 2), None)                         # a local file: cheap to read again
    assert decision.ours and not decision.kept and len(decision.to_prove) == 2
    assert 'do not fit' in local.decide(listed(1, size=4 * MiB), None).discard           # no part size fits...
    assert 'do not fit' in reuse_case(size=9 * MiB, rereads=True)[0].decide(listed(1, 2, 3), None).discard


def test_if_verify_md5_every_kept_part_is_read_again():
    reuse, obj = reuse_case(verify=True)
    entry = {'identity': obj.identity, 'part_size': 5 * MiB, 'parts': {1: f'{1:032x}', 2: f'{2:032x}'}}
    decision = reuse.decide(listed(1, 2), entry)
    assert not decision.kept and len(decision.to_prove) == 2 and not decision.ours


def test_a_proof_does_not_take_an_unknown_etag_scheme_for_a_contradiction():
    """GCS: parts get MD5 ETags, the object an ETag of another kind; until the store has shown S3's scheme, an
    object ETag that is not the parts' MD5s proves nothing either way."""
    from s3_upload import NotOurs
    other = '"' + 'c' * 32 + '-2"'
    assert proof_of([b'a' * 100, b'b' * 50], checksum=False, etags_known=False)[0].judge(other, {}, 150) == ''
    with pytest.raises(NotOurs):
        proof_of([b'a' * 100, b'b' * 50], checksum=False)[0].judge(other, {}, 150)


def test_files_sent_in_one_request_hold_no_more_bytes_in_flight_than_the_gate_allows():
    """On a long link each such file is a TCP flow in slow start: hundreds at once overflow its queues."""
    import threading
    from s3_upload import FileGate
    gate = FileGate(100, threading.Event(), bytes_limit=1000)
    gate.acquire(600)
    waiting = threading.Thread(target=gate.acquire, args=(600,))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive() and gate.used == 1
    gate.acquire(0)                 # a multipart file holds memory for its parts, not these bytes
    gate.release(600)
    waiting.join(5)
    assert not waiting.is_alive() and gate.used == 2 and gate.bytes_used == 600
    alone = FileGate(100, threading.Event(), bytes_limit=10)
    alone.acquire(50)               # larger than the limit: it goes alone
    assert alone.bytes_used == 50


def test_window_limits_one_request_files_by_bytes_only_on_a_long_link():
    from s3_upload import InFlightWindow
    start = InFlightWindow.request_bytes_to_start
    assert start(None) == start(0.002) == float('inf')
    assert start(0.1) == 16 * MiB and start(0.25) == 40 * MiB

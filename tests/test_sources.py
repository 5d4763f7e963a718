"""Sources: the local walk (order, names, links) and S3 buckets of another account/endpoint (S3_TO_S3)."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import (MiB, SMALL_PARTS, bucket_contents, random_bytes, s3_to_s3, unfinished_uploads, wait_for_parts,
                      write_tree)
from s3_upload import LocalSource



def test_local_walk_yields_keys_in_s3_order(tmp_path):
    names = ['a-b', 'a/x', 'a/y/z', 'a.txt', 'a0', 'b', 'é', 'Z', 'a b', '中']
    write_tree(tmp_path, {name: name.encode() for name in names})
    keys = [obj.key for obj in LocalSource(str(tmp_path)).objects()]
    assert keys == sorted(names, key=lambda k: k.encode('utf-8'))


def test_local_walk_survives_symlink_loops(tmp_path):
    write_tree(tmp_path, {'d/f.txt': b'f'})
    (tmp_path / 'd' / 'loop').symlink_to(tmp_path / 'd')
    objects = list(LocalSource(str(tmp_path)).objects())
    assert [o.key for o in objects] == ['d/f.txt']


def test_a_short_job_copies_the_listing_that_found_it_short(tmp_path):
    """The folder of a short job is walked once (its start is on the way to the first request): what
    small_job listed is what the planner gets. A job found not short keeps nothing and walks again."""
    write_tree(tmp_path, {'a': b'a', 'b/c': b'c'})
    short = LocalSource(str(tmp_path))
    assert short.small_job(2, 10, 10)
    (tmp_path / 'later').write_bytes(b'l')
    assert [obj.key for obj in short.objects()] == ['a', 'b/c']
    assert short.small_job(2, 10, 10) and [obj.key for obj in short.objects()] == ['a', 'b/c']
    longer = LocalSource(str(tmp_path))
    assert not longer.small_job(2, 10, 10)
    (tmp_path / 'z').write_bytes(b'z')
    assert [obj.key for obj in longer.objects()] == ['a', 'b/c', 'later', 'z']


def test_a_small_local_file_is_read_whole_and_checked_against_its_listing(tmp_path):
    """fetch returns the file as listed; grown, shrunk, rewritten (same size, new mtime) or gone since
    the listing, it says so instead of handing over other bytes."""
    from s3_upload import SourceChanged, SourceGone
    root = write_tree(tmp_path / 'src', {'a.bin': random_bytes(70000, 3), 'b': b'', 'c': b'ccc', 'd': b'dd', 'e': b'e'})
    source = LocalSource(str(root))
    listed = {obj.key: obj for obj in source.objects()}
    assert source.fetch(listed['a.bin'])[0] == random_bytes(70000, 3)
    assert source.fetch(listed['b'])[0] == b''
    (root / 'c').write_bytes(b'cccc')
    (root / 'd').write_bytes(b'd')
    os.utime(root / 'e', ns=(0, 12345))
    for key in 'cde':
        with pytest.raises(SourceChanged):
            source.fetch(listed[key])
    (root / 'a.bin').unlink()
    with pytest.raises(SourceGone):
        source.fetch(listed['a.bin'])


def test_names_that_cannot_be_keys_fail_alone(seaweed, tool, tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'ok.txt').write_bytes(b'ok')
    os.close(os.open(os.path.join(os.fsencode(src), b'bad-\xff-name'), os.O_CREAT | os.O_WRONLY))
    deep = src / '/'.join(['d' * 200] * 6)   # 1,214 bytes
    deep.mkdir(parents=True)
    (deep / 'long.txt').write_bytes(b'long')
    (src / 'new\nline.txt').write_bytes(b'newline in name')
    bucket = seaweed.bucket()
    run = tool.run({'JobType': 'LOCAL_TO_S3', 'DesProfileName': seaweed.profile,
                    'DesEndPointURL': seaweed.endpoint, 'DesBucket': bucket, 'SrcDir': src})
    assert run.code == 1 and run.report, run.stderr
    assert bucket_contents(seaweed, bucket) == {'ok.txt': b'ok', 'new\nline.txt': b'newline in name'}
    errors = sorted(f['error'] for f in run.report['failures'])
    assert len(errors) == 2
    assert any('not valid UTF-8' in e for e in errors) and any('S3 allows 1024' in e for e in errors)


def fill(server, bucket, objects):
    client = server.client()
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def test_s3_to_s3_between_two_endpoints_and_credential_sets(moto, seaweed, tool):
    objects = {'in/a.txt': b'a', 'in/empty': b'', 'in/dir/': b'', 'in/漢字 +%.bin': random_bytes(1000, 1),
               'in/big.bin': random_bytes(12 * MiB + 5, 2), 'inside-not-below': b'no', 'other/x': b'no'}
    src_bucket, dst_bucket = moto.bucket(), seaweed.bucket()
    fill(moto, src_bucket, objects)
    settings = s3_to_s3(moto, src_bucket, seaweed, dst_bucket, SrcPrefix='in', S3Prefix='out/put', **SMALL_PARTS)
    run = tool.run(settings)
    assert run.code == 0, run.stderr
    expected = {f'out/put/{k[3:]}': v for k, v in objects.items() if k.startswith('in/')}
    assert bucket_contents(seaweed, dst_bucket) == expected
    assert run.report['files_transferred'] == 5 and run.report['parts_uploaded'] == 4 + 3
    again = tool.run(settings)
    assert again.code == 0 and again.report['files_skipped'] == 5


def test_source_listing_etags_without_quotes_are_read_once(rclone, seaweed, tool):
    """rclone serve s3 lists ETags unquoted but answers GET with quotes: the same version, so every
    object is read once, not restarted as 'overwritten' (which doubled the requests of S3 -> S3)."""
    objects = {f'k{n}': random_bytes(1000 + n, n) for n in range(5)}
    objects['big.bin'] = random_bytes(6 * MiB, 9)
    src_bucket, dst_bucket = rclone.bucket(), seaweed.bucket()
    fill(rclone, src_bucket, objects)
    assert not rclone.client().list_objects_v2(Bucket=src_bucket)['Contents'][0]['ETag'].startswith('"')
    run = tool.run(s3_to_s3(rclone, src_bucket, seaweed, dst_bucket, **SMALL_PARTS))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, dst_bucket) == objects
    assert 'starting this file again' not in run.stderr and run.report['files_transferred'] == 6


def test_s3_to_s3_same_server_different_credentials(seaweed, tool):
    src_bucket, dst_bucket = seaweed.bucket('src'), seaweed.bucket('dst')
    fill(seaweed, src_bucket, {'k1': b'one', 'k2': random_bytes(6 * MiB, 3)})
    settings = s3_to_s3(seaweed, src_bucket, seaweed, dst_bucket, SrcProfileName='seaweed_source', **SMALL_PARTS,
                        ServerSideCopy='never')
    run = tool.run(settings)
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, dst_bucket) == bucket_contents(seaweed, src_bucket)
    assert run.report['bytes_transferred'] == 6 * MiB + 3 and run.report['bytes_copied_server_side'] == 0


def test_s3_source_single_key(moto, seaweed, tool):
    src_bucket, dst_bucket = moto.bucket(), seaweed.bucket()
    fill(moto, src_bucket, {'p/one.txt': b'1', 'p/two.txt': b'2'})
    run = tool.run(s3_to_s3(moto, src_bucket, seaweed, dst_bucket, S3Prefix='p', SrcFileIndex='two.txt'))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, dst_bucket) == {'p/two.txt': b'2'}


def test_s3_source_overwritten_mid_copy_restarts_the_object(seaweed, tool):
    """Reads are pinned to the listed ETag: an overwrite restarts the object, never mixes versions."""
    src_bucket, dst_bucket = seaweed.bucket('src'), seaweed.bucket('dst')
    old, new = random_bytes(30 * MiB, 4), random_bytes(30 * MiB, 5)
    fill(seaweed, src_bucket, {'v.bin': old})
    settings = s3_to_s3(seaweed, src_bucket, seaweed, dst_bucket, **SMALL_PARTS, MaxThread=1, BandwidthLimit=10,
                        ServerSideCopy='never')
    process = tool.start(settings)
    assert wait_for_parts(seaweed, dst_bucket, 'v.bin', 1)
    seaweed.client().put_object(Bucket=src_bucket, Key='v.bin', Body=new)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert b'overwritten during the copy' in err
    assert bucket_contents(seaweed, dst_bucket) == {'v.bin': new}
    assert unfinished_uploads(seaweed, dst_bucket) == []


def test_s3_to_s3_kill_and_resume(moto, seaweed, tool):
    """Parts kept from the killed run are not read from the source again: their CRC64NVME (which
    SeaweedFS's ListParts leaves out) comes from the journal, and the whole object's CRC is checked."""
    from fault_proxy import FaultProxy
    src_bucket, dst_bucket = moto.bucket(), seaweed.bucket()
    data = random_bytes(40 * MiB, 6)
    fill(moto, src_bucket, {'r.bin': data})
    proxy = FaultProxy(moto.endpoint)
    try:
        settings = s3_to_s3(moto, src_bucket, seaweed, dst_bucket, SrcEndPointURL=proxy.endpoint, **SMALL_PARTS,
                            MaxThread=2, BandwidthLimit=10)
        process = tool.start(settings)
        assert len(wait_for_parts(seaweed, dst_bucket, 'r.bin', 3)) >= 3
        process.send_signal(signal.SIGKILL)
        process.wait()
        proxy.clear()
        settings['BandwidthLimit'] = 0
        run = tool.run(settings)
    finally:
        proxy.stop()
    assert run.code == 0, run.stderr
    assert run.report['parts_resumed'] >= 3
    assert run.report['bytes_transferred'] + run.report['bytes_resumed'] == len(data)
    assert bucket_contents(seaweed, dst_bucket) == {'r.bin': data}
    reads = [target for method, target, _ in proxy.log if method == 'GET' and 'r.bin' in target]
    assert len(reads) == run.report['parts_uploaded'] == 8 - run.report['parts_resumed'], reads
    assert run.report['verified_by'] == {'crc64nvme': 1}, run.report


def test_small_s3_objects_read_through_the_crt_lane_are_checked_against_their_checksums(seaweed, tool):
    """Small source objects come through the C runtime's GET; a full-object CRC32 / CRC32C / SHA256 the
    source keeps is checked over the bytes read, so an answer corrupted on the way is read again."""
    from fault_proxy import FaultProxy
    src_bucket, dst_bucket = seaweed.bucket('src'), seaweed.bucket('dst')
    client = seaweed.client()
    objects = {f'{name.lower()}.txt': random_bytes(3000 + n, n) for n, name in enumerate(('CRC32', 'CRC32C', 'SHA256'))}
    for key, body in objects.items():
        client.put_object(Bucket=src_bucket, Key=key, Body=body, ChecksumAlgorithm=key.split('.')[0].upper())
    objects['plain.txt'] = b'no checksum'
    client.put_object(Bucket=src_bucket, Key='plain.txt', Body=objects['plain.txt'])
    proxy = FaultProxy(seaweed.endpoint)
    proxy.add('corrupt_answer', 'GET', r'/crc32\.txt', times=1)
    try:
        run = tool.run(s3_to_s3(seaweed, src_bucket, seaweed, dst_bucket, SrcEndPointURL=proxy.endpoint,
                                ServerSideCopy='never'))
    finally:
        proxy.stop()
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, dst_bucket) == objects
    assert "crc32.txt: data read does not match the source's crc32; starting this file again" in run.stderr
    assert run.report['verified_by'] == {'crc32': 1, 'crc32c': 1, 'sha256': 1, 'source-md5': 1}, run.report
    gets = [agent for method, target, agent in proxy.agents if method == 'GET' and '.txt' in target]
    assert len(gets) == 5 and all('awscrt' in agent for agent in gets), gets


def test_small_objects_are_stored_under_the_source_md5_and_a_bad_read_is_caught(seaweed, tool):
    """Content-MD5 is the source's own ETag: the destination proves every byte equals what the source
    stored, without hashing here. A read corrupted on the way is refused by the destination and read
    again; from then on the bytes go under their own checksum (the ETags might have been no MD5s): the
    CRC64NVME that SeaweedFS verifies."""
    from fault_proxy import FaultProxy
    src_bucket, dst_bucket = seaweed.bucket('src'), seaweed.bucket('dst')
    objects = {f'f{n}.txt': random_bytes(5000 + n, 40 + n) for n in range(6)}
    fill(seaweed, src_bucket, objects)
    proxy = FaultProxy(seaweed.endpoint)
    proxy.add('corrupt_answer', 'GET', r'/f3\.txt', times=1)
    try:
        first = tool.run(s3_to_s3(seaweed, src_bucket, seaweed, dst_bucket, SrcEndPointURL=proxy.endpoint,
                                  ServerSideCopy='never', MaxParallelFile=1))
    finally:
        proxy.stop()
    assert first.code == 0, first.stderr
    assert bucket_contents(seaweed, dst_bucket) == objects
    assert "f3.txt: data read does not match the source's ETag; starting this file again" in first.stderr
    assert 'taking Content-MD5 from the source ETag is not possible here' in first.stderr
    assert first.report['verified_by'] == {'source-md5': 3, 'crc64nvme': 3}, first.report
    again = tool.run(s3_to_s3(seaweed, src_bucket, seaweed, seaweed.bucket('again'), ServerSideCopy='never'))
    assert again.code == 0 and again.report['verified_by'] == {'source-md5': 6}, again.report


@pytest.mark.parametrize('answer, expected', [
    ({'ETag': '"0cc175b9c0f1b6a831c399e269772661"', 'ChecksumCRC32': 'AAAAAA=='}, 'crc32'),
    ({'ETag': '"0cc175b9c0f1b6a831c399e269772661"', 'ChecksumSHA256': 'AAAA', 'ChecksumCRC32C': 'AAAAAA=='}, 'crc32c'),
    ({'ETag': '"0cc175b9c0f1b6a831c399e269772661-3"', 'ChecksumCRC32': 'AAAAAA=='}, None),   # maybe composite
    ({'ETag': '"0cc175b9c0f1b6a831c399e269772661-3"', 'ChecksumCRC32': 'AAAAAA==', 'ChecksumType': 'FULL_OBJECT'},
     'crc32'),
    ({'ETag': '"0cc175b9c0f1b6a831c399e269772661-3"', 'ChecksumCRC64NVME': 'AAAAAAAAAAA='}, 'crc64nvme'),
    ({'ETag': '"0cc175b9c0f1b6a831c399e269772661-3"', 'ChecksumCRC32': 'AAAAAA==-3', 'ChecksumType': 'COMPOSITE'},
     None),
    ({'ETag': '"0cc175b9c0f1b6a831c399e269772661"', 'ChecksumSHA1': 'AAAA'}, 'sha1'),
    ({'ETag': '"0cc175b9c0f1b6a831c399e269772661"'}, None),
])
def test_whole_object_checksums_are_trusted_only_where_they_cover_the_whole_object(answer, expected):
    from s3_upload import whole_checksum
    found = whole_checksum(answer)
    assert (found and found.name) == expected
    if found and found.name == 'crc32':
        assert found.compute(b'') == 0 and found.combine is not None


def test_small_s3_reads_are_pinned_to_the_listed_version(seaweed):
    """A lane GET answers an overwritten or deleted object the way botocore's would: changed / gone."""
    import s3_upload
    bucket = seaweed.bucket('src')
    fill(seaweed, bucket, {'k.txt': b'first'})
    import botocore.credentials
    keys = botocore.credentials.Credentials(seaweed.access_key, seaweed.secret_key)
    client = s3_upload.make_client('', seaweed.endpoint, 'us-east-1', 2, role='source', credentials=keys, lane=True)
    assert client.crt_lane is not None
    source = s3_upload.S3Source(client, bucket, '')
    [listed] = list(source.objects())
    assert source.fetch(listed)[0] == b'first'
    fill(seaweed, bucket, {'k.txt': b'second'})
    with pytest.raises(s3_upload.SourceChanged):
        source.fetch(listed)
    seaweed.client().delete_object(Bucket=bucket, Key='k.txt')
    with pytest.raises(s3_upload.SourceGone):
        source.fetch(source._describe('k.txt', 5, ''))


@pytest.mark.parametrize('setting, value, message', [
    ('SrcBucket', 'no-such-source-bucket', 'source bucket'),
    ('SrcProfileName', 'wrong_keys', 'source credentials rejected'),
    ('SrcFileIndex', 'missing.txt', 'source object not found'),
])
def test_s3_source_preflight_errors_exit_2(setting, value, message, moto, seaweed, tool):
    src_bucket, dst_bucket = seaweed.bucket('src'), moto.bucket()
    fill(seaweed, src_bucket, {'a.txt': b'a'})
    settings = s3_to_s3(seaweed, src_bucket, moto, dst_bucket, **{setting: value})
    run = tool.run(settings)
    assert run.code == 2, run.stderr
    assert message in run.stderr and 'Traceback' not in run.stderr
    assert bucket_contents(moto, dst_bucket) == {}

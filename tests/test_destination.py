"""What lands at the destination: metadata, tags, stamps, storage class, SSE, ACL, additional checksums."""

from __future__ import annotations

import base64
import datetime

import pytest

from conftest import MiB, SMALL_PARTS, bucket_contents, dest_settings, random_bytes, s3_to_s3, write_tree



def test_local_files_get_a_guessed_content_type_and_identity_stamps(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'page.html': b'<p>', 'data.json': b'{}', 'big.bin': random_bytes(6 * MiB)})
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS))
    assert run.code == 0, run.stderr
    client = seaweed.client()
    assert client.head_object(Bucket=bucket, Key='page.html')['ContentType'] == 'text/html'
    assert client.head_object(Bucket=bucket, Key='data.json')['ContentType'] == 'application/json'
    head = client.head_object(Bucket=bucket, Key='big.bin')
    stat = (src / 'big.bin').stat()
    assert head['Metadata']['s3u-src-size'] == str(stat.st_size)
    assert head['Metadata']['s3u-src-mtime'] == str(stat.st_mtime_ns)
    assert head['Metadata']['s3u-etag-part-size'] == str(5 * MiB)
    assert head['Metadata']['s3u-checksum'] == 'crc64nvme'      # SeaweedFS verifies it: no MD5 needed


@pytest.mark.parametrize('server_side', ['never', 'auto'])
def test_s3_metadata_and_tags_survive_the_copy(server_side, seaweed, moto, tool):
    """Streamed (moto -> SeaweedFS) and server-side (SeaweedFS -> SeaweedFS) copies keep metadata and tags."""
    src = moto if server_side == 'never' else seaweed
    src_bucket, dst_bucket = src.bucket('src'), seaweed.bucket('dst')
    client = src.client()
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    attributes = dict(ContentType='image/png', ContentEncoding='identity', ContentDisposition='attachment; x.png',
                      CacheControl='max-age=60', ContentLanguage='de', Expires=expires,
                      Metadata={'camera': 'x100', 'place': 'oslo'}, Tagging='team=red&year=2024')
    client.put_object(Bucket=src_bucket, Key='small.png', Body=b'png', **attributes)
    upload = client.create_multipart_upload(Bucket=src_bucket, Key='large.png', **attributes)['UploadId']
    body = random_bytes(11 * MiB, 5)
    etags = [client.upload_part(Bucket=src_bucket, Key='large.png', UploadId=upload, PartNumber=n,
                                Body=body[(n - 1) * 5 * MiB:n * 5 * MiB])['ETag'] for n in (1, 2, 3)]
    client.complete_multipart_upload(Bucket=src_bucket, Key='large.png', UploadId=upload, MultipartUpload={
        'Parts': [{'PartNumber': n, 'ETag': e} for n, e in zip((1, 2, 3), etags)]})
    run = tool.run(s3_to_s3(src, src_bucket, seaweed, dst_bucket, **SMALL_PARTS, CopyTags=True,
                            ServerSideCopy=server_side))
    assert run.code == 0, run.stderr
    if server_side == 'auto':
        assert run.report['bytes_copied_server_side'] == 11 * MiB + 3 and run.report['bytes_transferred'] == 0
    else:
        assert run.report['bytes_copied_server_side'] == 0
    out = seaweed.client()
    for key in ('small.png', 'large.png'):
        head = out.head_object(Bucket=dst_bucket, Key=key)
        assert head['ContentType'] == 'image/png'
        assert head['ContentDisposition'] == 'attachment; x.png'
        assert head['CacheControl'] == 'max-age=60'
        assert head['ContentLanguage'] == 'de'
        assert head['Expires'] == expires
        assert head['Metadata']['camera'] == 'x100' and head['Metadata']['place'] == 'oslo'
        assert 's3u-src-etag' in head['Metadata']
        tags = out.get_object_tagging(Bucket=dst_bucket, Key=key)['TagSet']
        assert sorted((t['Key'], t['Value']) for t in tags) == [('team', 'red'), ('year', '2024')]
    assert bucket_contents(seaweed, dst_bucket) == {'small.png': b'png', 'large.png': body}


def test_copy_metadata_false_and_no_tags(moto, seaweed, tool):
    src_bucket, dst_bucket = moto.bucket(), seaweed.bucket()
    moto.client().put_object(Bucket=src_bucket, Key='k', Body=b'v', ContentType='text/x-special',
                             Metadata={'secret-label': 'a'}, Tagging='t=1')
    run = tool.run(s3_to_s3(moto, src_bucket, seaweed, dst_bucket, CopyMetadata=False))
    assert run.code == 0, run.stderr
    head = seaweed.client().head_object(Bucket=dst_bucket, Key='k')
    assert head['ContentType'] != 'text/x-special' and 'secret-label' not in head['Metadata']
    assert seaweed.client().get_object_tagging(Bucket=dst_bucket, Key='k')['TagSet'] == []


def test_storage_class_sse_and_acl_are_applied(moto, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'s.txt': b'small', 'm.bin': random_bytes(6 * MiB, 6)})
    bucket = moto.bucket()
    run = tool.run(dest_settings(moto, bucket, SrcDir=src, **SMALL_PARTS, StorageClass='STANDARD_IA', SSE='AES256',
                                 ACL='bucket-owner-full-control', RequestPayer='requester'))
    assert run.code == 0, run.stderr
    client = moto.client()
    for key in ('s.txt', 'm.bin'):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head['StorageClass'] == 'STANDARD_IA' and head['ServerSideEncryption'] == 'AES256'
        grants = client.get_object_acl(Bucket=bucket, Key=key)['Grants']
        assert any(g['Permission'] == 'FULL_CONTROL' for g in grants)
    assert bucket_contents(moto, bucket) == {'s.txt': b'small', 'm.bin': (src / 'm.bin').read_bytes()}


@pytest.mark.parametrize('algorithm', ['CRC32C', 'CRC64NVME', 'SHA256'])
@pytest.mark.parametrize('server_name', ['seaweed', 'moto'])
def test_additional_checksums_sent_and_verified(algorithm, server_name, request, tool, tmp_path):
    server = request.getfixturevalue(server_name)
    files = {'small.txt': b'checksummed', 'multi.bin': random_bytes(12 * MiB + 1, 7)}
    src = write_tree(tmp_path / 'src', files)
    bucket = server.bucket()
    run = tool.run(dest_settings(server, bucket, SrcDir=src, **SMALL_PARTS, ChecksumAlgorithm=algorithm))
    assert run.code == 0, run.stderr
    assert bucket_contents(server, bucket) == files
    client = server.client()
    head = client.head_object(Bucket=bucket, Key='multi.bin', ChecksumMode='ENABLED')
    assert head.get(f'Checksum{algorithm}'), head
    small = client.head_object(Bucket=bucket, Key='small.txt', ChecksumMode='ENABLED')
    if algorithm == 'SHA256' and server_name == 'seaweed':
        import hashlib
        assert small[f'Checksum{algorithm}'] == base64.b64encode(hashlib.sha256(b'checksummed').digest()).decode()
    # SeaweedFS refuses bytes under a wrong checksum: its answers verify both objects. moto does not, so
    # MD5s are sent too: the ETags it answers with (the data's MD5, the parts' MD5s) prove both objects.
    expected = {algorithm.lower(): 2} if server_name == 'seaweed' else {'etag': 2}
    assert run.report['verified_by'] == expected, run.report


def test_s3_to_s3_end_to_end_crc64nvme_without_rereading(seaweed, tool):
    """Source objects written with CRC64NVME: the destination's CRC64NVME must equal the source's."""
    src_bucket, dst_bucket = seaweed.bucket('src'), seaweed.bucket('dst')
    client = seaweed.client()
    data = random_bytes(11 * MiB, 8)
    upload = client.create_multipart_upload(Bucket=src_bucket, Key='o.bin', ChecksumAlgorithm='CRC64NVME',
                                            ChecksumType='FULL_OBJECT')['UploadId']
    import awscrt.checksums as crt
    parts = []
    for n in (1, 2, 3):
        chunk = data[(n - 1) * 5 * MiB:n * 5 * MiB]
        value = base64.b64encode(crt.crc64nvme(chunk).to_bytes(8, 'big')).decode()
        etag = client.upload_part(Bucket=src_bucket, Key='o.bin', UploadId=upload, PartNumber=n, Body=chunk,
                                  ChecksumCRC64NVME=value)['ETag']
        parts.append({'PartNumber': n, 'ETag': etag, 'ChecksumCRC64NVME': value})
    client.complete_multipart_upload(Bucket=src_bucket, Key='o.bin', UploadId=upload, MultipartUpload={'Parts': parts})
    full = base64.b64encode(crt.crc64nvme(data).to_bytes(8, 'big')).decode()
    assert client.head_object(Bucket=src_bucket, Key='o.bin', ChecksumMode='ENABLED')['ChecksumCRC64NVME'] == full
    for server_side in ('never', 'auto'):
        run = tool.run(s3_to_s3(seaweed, src_bucket, seaweed, dst_bucket, S3Prefix='', **SMALL_PARTS,
                                ChecksumAlgorithm='CRC64NVME', ServerSideCopy=server_side, CompareMode='identity',
                                SrcPrefix=''))
        assert run.code == 0, run.stderr
        assert run.report['verified_by'] == {'crc64nvme': 1}, run.report
        head = client.head_object(Bucket=dst_bucket, Key='o.bin', ChecksumMode='ENABLED')
        assert head['ChecksumCRC64NVME'] == full
        client.delete_object(Bucket=dst_bucket, Key='o.bin')


def test_addressing_style(seaweed, tool, tmp_path):
    import s3_upload
    assert s3_upload._path_style_host('http://127.0.0.1:9000') and s3_upload._path_style_host('https://minio.lan')
    assert not s3_upload._path_style_host('https://oss-cn-beijing.aliyuncs.com')
    import os
    os.environ.update(AWS_ACCESS_KEY_ID=seaweed.access_key, AWS_SECRET_ACCESS_KEY=seaweed.secret_key)
    try:
        for style in ('path', 'virtual'):
            client = s3_upload.make_client('', 'https://s3.example.com', 'us-east-1', 2, addressing=style)
            assert client.meta.config.s3['addressing_style'] == style
    finally:
        del os.environ['AWS_ACCESS_KEY_ID'], os.environ['AWS_SECRET_ACCESS_KEY']
    src = write_tree(tmp_path / 'src', {'f': b'1'})
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, AddressingStyle='path'))
    assert run.code == 0 and bucket_contents(seaweed, bucket) == {'f': b'1'}


def test_china_regions_resolve_to_the_aws_cn_partition(monkeypatch):
    import s3_upload
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'AKIACHINATEST0000000')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'china/test/secret/0000000000000000000000')
    for region in ('cn-north-1', 'cn-northwest-1'):
        client = s3_upload.make_client('', None, region, 2)
        assert client.meta.partition == 'aws-cn'
        assert client.meta.endpoint_url == f'https://s3.{region}.amazonaws.com.cn'
    assert s3_upload.make_client('', None, 'us-west-2', 2).meta.partition == 'aws'


def test_sse_kms_with_key_id(moto, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'k.txt': b'kms', 'm.bin': random_bytes(6 * MiB, 9)})
    bucket = moto.bucket()
    key_id = 'arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555'
    run = tool.run(dest_settings(moto, bucket, SrcDir=src, **SMALL_PARTS, SSE='aws:kms', SSEKMSKeyId=key_id))
    assert run.code == 0, run.stderr
    for key in ('k.txt', 'm.bin'):
        head = moto.client().head_object(Bucket=bucket, Key=key)
        assert head['ServerSideEncryption'] == 'aws:kms' and head['SSEKMSKeyId'] == key_id


LANE_KEYS = {'plain.txt': b'plain', 'odd name+%41~=&;,$@!(1).txt': b'odd', 'ünï/ключ 名.txt': b'utf-8',
             'dots./x..y/~tilde =.txt': b'dots', 'empty': b''}


@pytest.mark.parametrize('use_crt', ['auto', 'never'])
def test_small_puts_take_the_crt_lane_with_every_header(use_crt, moto, seaweed, tool):
    """With awscrt installed, small PutObjects are signed and sent by the C runtime (SeaweedFS checks the
    signature of odd keys and Content-MD5), carrying metadata and tags; parts still go through botocore."""
    from fault_proxy import FaultProxy
    src_bucket, dst_bucket = moto.bucket('src'), seaweed.bucket('dst')
    client = moto.client()
    for key, body in LANE_KEYS.items():
        client.put_object(Bucket=src_bucket, Key=key, Body=body, ContentType='text/x-test',
                          Metadata={'camera': 'x100'}, Tagging='team=red')
    large = random_bytes(6 * MiB, 8)
    client.put_object(Bucket=src_bucket, Key='large.bin', Body=large)
    proxy = FaultProxy(seaweed.endpoint)
    try:
        run = tool.run(s3_to_s3(moto, src_bucket, seaweed, dst_bucket, DesEndPointURL=proxy.endpoint,
                                **SMALL_PARTS, CopyTags=True, UseCRT=use_crt))
    finally:
        proxy.stop()
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, dst_bucket) == {**LANE_KEYS, 'large.bin': large}
    head = seaweed.client().head_object(Bucket=dst_bucket, Key='ünï/ключ 名.txt')
    assert head['ContentType'] == 'text/x-test' and head['Metadata']['camera'] == 'x100'
    assert head['Metadata']['s3u-src-etag'] and head['Metadata']['s3u-checksum'] == 'crc64nvme', run.stderr
    tags = seaweed.client().get_object_tagging(Bucket=dst_bucket, Key='dots./x..y/~tilde =.txt')['TagSet']
    assert tags == [{'Key': 'team', 'Value': 'red'}]
    puts = [(target, agent) for method, target, agent in proxy.agents if method == 'PUT']
    small = [agent for target, agent in puts if 'large.bin' not in target and 'write-check' not in target]
    parts = [agent for target, agent in puts if 'partNumber=' in target and 'write-check' not in target]
    assert len(small) == len(LANE_KEYS) and len(parts) == 2
    assert all(('awscrt' in agent) == (use_crt == 'auto') for agent in small), small
    assert all('botocore' in agent and 'awscrt' not in agent for agent in parts), parts


def test_crt_lane_serialises_headers_like_botocore_and_leaves_non_ascii_to_it():
    import s3_upload
    client = s3_upload.make_client('', 'http://127.0.0.1:9', 'us-east-1', 2, credentials=_keys(), lane=True)
    lane = client.crt_lane
    assert lane is not None, 'awscrt is in requirements.txt: the lane must exist'
    retain = datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)
    headers = lane.headers({'ContentMD5': 'bWQ1', 'Metadata': {'a': '1'}, 'StorageClass': 'STANDARD_IA',
                            'Expires': retain, 'ObjectLockRetainUntilDate': retain, 'BucketKeyEnabled': True})
    assert headers == [('Content-MD5', 'bWQ1'), ('x-amz-meta-a', '1'), ('x-amz-storage-class', 'STANDARD_IA'),
                       ('Expires', 'Mon, 03 Feb 2031 04:05:06 GMT'),
                       ('x-amz-object-lock-retain-until-date', '2031-02-03T04:05:06Z'),
                       ('x-amz-server-side-encryption-bucket-key-enabled', 'true')]
    assert lane.headers({'Metadata': {'place': 'Zürich'}}) is None
    assert lane.put('bucket', 'key', b'data', {'Metadata': {'place': 'Zürich'}}) is None   # no request sent
    never = s3_upload.make_client('', 'http://127.0.0.1:9', 'us-east-1', 2, credentials=_keys(), lane=False)
    assert never.crt_lane is None


def test_crt_lane_signs_with_the_keys_credentials_that_expire_hold_at_each_request(seaweed):
    """Credentials that expire (assume-role, SSO, SSM in cluster mode) are asked for at every signature;
    plain keys are handed to the C runtime once."""
    import botocore.credentials
    import botocore.exceptions
    import s3_upload
    bucket = seaweed.bucket()
    keys = {'access_key': seaweed.access_key, 'secret_key': seaweed.secret_key}

    def refreshed() -> dict:      # always within the mandatory refresh window: botocore asks every time
        soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
        return {**keys, 'token': None, 'expiry_time': soon.isoformat()}

    expiring = botocore.credentials.RefreshableCredentials.create_from_metadata(refreshed(), refreshed, 'test')
    lane = s3_upload.make_client('', seaweed.endpoint, 'us-east-1', 2, credentials=expiring, lane=True).crt_lane
    assert lane.put(bucket, 'first', b'one', {}) is not None
    keys['secret_key'] = 'rotated away'
    with pytest.raises(botocore.exceptions.ClientError, match='SignatureDoesNotMatch'):
        lane.put(bucket, 'second', b'two', {})
    plain = botocore.credentials.Credentials(seaweed.access_key, seaweed.secret_key)
    lane = s3_upload.make_client('', seaweed.endpoint, 'us-east-1', 2, credentials=plain, lane=True).crt_lane
    plain.secret_key = 'changed after the lane was made'
    assert lane.put(bucket, 'third', b'three', {}) is not None
    assert bucket_contents(seaweed, bucket) == {'first': b'one', 'third': b'three'}


def _keys():
    import botocore.credentials
    return botocore.credentials.Credentials('AKIDEXAMPLE', 'secret')


def test_write_check_of_a_run_killed_mid_check_is_cleaned_up(seaweed, tool, tmp_path):
    """The write check (a multipart upload started and aborted) of a run killed in between is aborted by
    the next run, which found it while loading the upload index alongside its own check."""
    from conftest import unfinished_uploads
    bucket = seaweed.bucket()
    for key in ('in/.s3_upload-write-check', 'in/.s3_upload-write-check-0123456789ab'):   # older, newer names
        seaweed.client().create_multipart_upload(Bucket=bucket, Key=key)
    src = write_tree(tmp_path / 'src', {'a.txt': b'a'})
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, S3Prefix='in'))
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == {'in/a.txt': b'a'}
    assert unfinished_uploads(seaweed, bucket) == []


def test_the_checks_first_listing_page_plans_the_run_and_the_write_check_waits_for_it(seaweed, tool, tmp_path):
    """Round trips count on long links: the listing that proves the bucket is also the first page of the
    plan's destination listing (pages of ListPageSize keys, no page listed twice); the write check starts
    only once that listing has answered (SeaweedFS would create a missing bucket on a write), and its
    upload is aborted by the end of the run."""
    from conftest import unfinished_uploads
    from fault_proxy import FaultProxy
    bucket = seaweed.bucket()
    there = {'in/a.txt': b'same', 'in/b.txt': b'same', 'in/c.txt': b'same'}
    for key, body in there.items():
        seaweed.client().put_object(Bucket=bucket, Key=key, Body=body)
    new = {f'd{n:02}.txt': b'new' for n in range(40)}      # more files than are asked by HEAD
    src = write_tree(tmp_path / 'src', {'a.txt': b'same', 'b.txt': b'same', 'c.txt': b'same', **new})
    proxy = FaultProxy(seaweed.endpoint)
    slow = proxy.add('delay', 'GET', r'list-type=2', seconds=0.5)
    try:
        run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, S3Prefix='in', ListPageSize=2,
                                     DesEndPointURL=proxy.endpoint))
    finally:
        proxy.stop()
    assert run.code == 0, run.stderr
    assert run.report['files_skipped'] == 3 and run.report['files_transferred'] == 40, run.report
    assert bucket_contents(seaweed, bucket) == {**there, **{'in/' + key: body for key, body in new.items()}}
    requests = [(method, target) for method, target, _ in proxy.agents]
    listings = [target for method, target in requests if method == 'GET' and 'list-type=2' in target]
    assert len(listings) == 2 and 'continuation-token' in listings[1], listings       # 3 keys, pages of 2
    assert slow.hits == 1
    first_write = next(i for i, (method, _) in enumerate(requests) if method in ('POST', 'PUT'))
    check_listing = requests.index(('GET', listings[0]))
    assert proxy.arrivals[first_write] - proxy.arrivals[check_listing] >= 0.5, requests
    assert unfinished_uploads(seaweed, bucket) == []


def test_an_upload_listing_answered_nosuchupload_is_an_empty_one(rclone, tool, tmp_path):
    """rclone serve s3 answers ListMultipartUploads with NoSuchUpload in a bucket that never had an upload:
    the run takes that as none (its upload index loads, no per-file listings, no warning)."""
    data = random_bytes(11 * MiB, 31)
    src = write_tree(tmp_path / 'src', {'big.bin': data, 'small.txt': b'small'})
    bucket = rclone.bucket()
    run = tool.run(dest_settings(rclone, bucket, SrcDir=src, **SMALL_PARTS))
    assert run.code == 0, run.stderr
    assert 'WARNING' not in run.stderr, run.stderr
    assert bucket_contents(rclone, bucket) == {'big.bin': data, 'small.txt': b'small'}


@pytest.mark.parametrize('text', ['Mon, 30 Nov 2026 16:27:09 GMT', '2026-11-30T16:27:09.000Z', '2026-11-30T16:27:09Z',
                                  '2026-11-30T16:27:09.123456Z', '2026-11-30T16:27:09', '1700000000',
                                  'Thu, 01 Jan 1970 00:00:00 -0000', '2026-11-30T16:27:09+02:00'])
def test_timestamps_parse_as_botocore_parses_them(text):
    """The dateutil-free parser gives the same moment as botocore's for every form S3 stores answer with."""
    import botocore.utils
    from s3_upload import parse_timestamp
    assert parse_timestamp(text) == botocore.utils.parse_timestamp(text)
    with pytest.raises(ValueError):
        parse_timestamp('not a time')


def test_the_upload_index_leaves_this_runs_own_write_check_alone(seaweed, tool, tmp_path):
    """The upload index, loaded alongside the write check, aborts the write checks of killed runs but not
    the one in flight: when it lists that upload before the probe part is sent (the listing held back
    here until the upload exists), the part still finds its upload, and SeaweedFS verifies CRCs."""
    from fault_proxy import FaultProxy
    proxy = FaultProxy(seaweed.endpoint)
    held = proxy.add('stall', 'POST', r'write-check[^/]*\?uploads', seconds=2)
    late = proxy.add('delay', 'GET', r'\?uploads', seconds=1)     # the listing reaches the store after it
    try:
        _, run = _copied_with_defaults(seaweed, tool, tmp_path, {'crc64nvme': 3}, proxy.endpoint)
    finally:
        proxy.stop()
    assert held.hits == 1 and late.hits == 1
    assert 'NoSuchUpload' not in run.stderr


AUTO_FILES = {'small.txt': b'checked by the store', 'empty': b'', 'multi.bin': random_bytes(12 * MiB + 5, 9)}


def _crc64nvme(data: bytes) -> str:
    import awscrt.checksums
    return base64.b64encode(awscrt.checksums.crc64nvme(data).to_bytes(8, 'big')).decode()


def _copied_with_defaults(server, tool, tmp_path, verified_by, endpoint=None):
    """Copy AUTO_FILES with the default settings (through endpoint, e.g. a FaultProxy, when given); check
    the bytes and how they were verified; (bucket, run)."""
    src = write_tree(tmp_path / 'src', AUTO_FILES)
    bucket = server.bucket()
    settings = dest_settings(server, bucket, SrcDir=src, **SMALL_PARTS)
    run = tool.run({**settings, 'DesEndPointURL': endpoint} if endpoint else settings)
    assert run.code == 0, run.stderr
    assert bucket_contents(server, bucket) == AUTO_FILES
    assert run.report['verified_by'] == verified_by, run.report
    return bucket, run


def test_auto_checksum_lets_a_store_that_verifies_crc64nvme_check_every_byte(seaweed, tool, tmp_path):
    """ChecksumAlgorithm = auto (the default): SeaweedFS refuses the write check's part sent under a wrong
    CRC64NVME, so objects and parts go with their CRC64NVME alone (no MD5 computed here), each answer
    reports the CRC back, and the objects keep it."""
    bucket, _ = _copied_with_defaults(seaweed, tool, tmp_path, {'crc64nvme': 3})
    client = seaweed.client()
    for key, body in AUTO_FILES.items():
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode='ENABLED')
        assert head['ChecksumCRC64NVME'] == _crc64nvme(body) and head['Metadata']['s3u-checksum'] == 'crc64nvme'


@pytest.mark.parametrize('request_name, method, match', [
    ('CreateMultipartUpload', 'POST', r'write-check[^/?]*\?uploads'),
    ('UploadPart', 'PUT', r'write-check[^/?]*\?.*partNumber=1'),
], ids=['create', 'part'])
def test_auto_checksum_decides_after_transient_errors_in_the_write_check(request_name, method, match, seaweed,
                                                                         tool, tmp_path):
    """A write check request that fails for a while (500s beyond botocore's own retries) is sent again:
    one bad moment at the start does not leave a whole run on Content-MD5 where the store verifies CRCs."""
    from fault_proxy import FaultProxy
    proxy = FaultProxy(seaweed.endpoint)
    rule = proxy.add('status', method, match, times=4)
    try:
        _, run = _copied_with_defaults(seaweed, tool, tmp_path, {'crc64nvme': 3}, proxy.endpoint)
    finally:
        proxy.stop()
    assert rule.hits == 4
    assert [line for line in run.stderr.splitlines() if '(write check) failed' in line and request_name in line]


@pytest.mark.parametrize('server_name', ['rclone', 'moto'])
def test_auto_checksum_keeps_content_md5_where_the_store_does_not_verify(server_name, request, tool, tmp_path):
    """rclone serve s3 and moto accept a part under a wrong CRC64NVME: auto sends no checksum there, and
    every object is proven by Content-MD5 and its ETag as before."""
    server = request.getfixturevalue(server_name)
    bucket, _ = _copied_with_defaults(server, tool, tmp_path, {'etag': 3})
    client = server.client()
    assert 'ChecksumCRC64NVME' not in client.head_object(Bucket=bucket, Key='multi.bin', ChecksumMode='ENABLED')
    metadata = client.head_object(Bucket=bucket, Key='small.txt')['Metadata']
    assert metadata.get('s3u-checksum') == ('md5' if server_name == 'moto' else None)   # rclone keeps none


def _auto_files_through_a_proxy(seaweed, tool, tmp_path, match: str, headers: dict):
    """AUTO_FILES copied, one file at a time, into a new SeaweedFS bucket through a fault proxy that replaces
    these answer headers of the PUT matching `match` (once); (the run, the rule, the bucket)."""
    from fault_proxy import FaultProxy
    proxy = FaultProxy(seaweed.endpoint)
    rule = proxy.add('headers', 'PUT', match, headers=headers)
    try:
        src = write_tree(tmp_path / 'src', AUTO_FILES)
        bucket = seaweed.bucket()
        settings = dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxParallelFile=1)
        run = tool.run({**settings, 'DesEndPointURL': proxy.endpoint})
    finally:
        proxy.stop()
    return run, rule, bucket


@pytest.mark.parametrize('etag', [None, '"0123456789abcdef0123456789abcdef"'], ids=['etag-kept', 'etag-wrong'])
def test_a_store_that_stops_reporting_the_checksum_back_gets_content_md5_again(etag, seaweed, tool, tmp_path):
    """An answer without the CRC64NVME it was sent under: the ETag must then be the MD5 of the bytes (else
    they are sent again), and the rest of the run sends Content-MD5 along."""
    replaced = {'x-amz-checksum-crc64nvme': None, **({'ETag': etag} if etag else {})}
    run, rule, bucket = _auto_files_through_a_proxy(seaweed, tool, tmp_path, r'/small\.txt$', replaced)
    assert rule.hits == 1 and run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == AUTO_FILES
    assert 'sending Content-MD5 too' in run.stderr
    assert ('starting this file again' in run.stderr) == (etag is not None)
    # Files go in key order, one at a time: empty, multi.bin (CRC alone), then small.txt (the answer
    # without the CRC), after which the ETag verifies.
    assert run.report['verified_by'] == {'crc64nvme': 2, 'etag': 1}, run.report


def test_a_part_the_store_confirms_neither_by_checksum_nor_by_etag_restarts_the_file_in_a_new_upload(
        seaweed, tool, tmp_path):
    """A part answered without its CRC64NVME and with an ETag that is not its MD5: the file starts over
    in a new upload, and the one that held that part is aborted (the start's upload index never knew it)."""
    from conftest import unfinished_uploads
    replaced = {'x-amz-checksum-crc64nvme': None, 'ETag': '"0123456789abcdef0123456789abcdef"'}
    run, rule, bucket = _auto_files_through_a_proxy(seaweed, tool, tmp_path,
                                                    r'/multi\.bin\?.*\bpartNumber=1(&|$)', replaced)
    assert rule.hits == 1 and run.code == 0, run.stderr
    assert 'multi.bin: the store confirmed neither the CRC64NVME nor the MD5 of the data' in run.stderr
    assert bucket_contents(seaweed, bucket) == AUTO_FILES
    assert unfinished_uploads(seaweed, bucket) == []

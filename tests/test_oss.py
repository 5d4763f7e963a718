"""ALIOSS_TO_S3: the real oss2 SDK against an OSS-protocol server, verified end to end by OSS's CRC-64."""

from __future__ import annotations


import pytest

from conftest import MiB, OSS_KEY, OSS_SECRET, SMALL_PARTS, bucket_contents, random_bytes, unfinished_uploads
from oss_server import CRC64_ECMA



def test_server_crc_is_the_standard_crc64_ecma():
    assert CRC64_ECMA(b'123456789') == 0x995DC9BBDF1939FA      # CRC-64/XZ check value


def oss_job(oss, oss_bucket, dest, dest_bucket, **more):
    return {'JobType': 'ALIOSS_TO_S3', 'ali_SrcBucket': oss_bucket, 'ali_endpoint': oss.endpoint,
            'DesProfileName': dest.profile, 'DesEndPointURL': dest.endpoint, 'DesBucket': dest_bucket, **more}


@pytest.fixture
def oss_env(tool):
    tool.env.update(OSS_ACCESS_KEY_ID=OSS_KEY, OSS_ACCESS_KEY_SECRET=OSS_SECRET)
    return tool


def test_oss_to_s3_is_byte_identical_with_crc64_verified(oss, seaweed, oss_env):
    tool = oss_env
    source = oss.bucket()
    objects = {'data/a.txt': b'hello oss', 'data/empty': b'', 'data/图片 +%.jpg': random_bytes(50_000, 1),
               'data/big.bin': random_bytes(17 * MiB + 333, 2), 'data/sub/x.json': b'{}', 'other/no': b'no'}
    for key, data in objects.items():
        oss.put(source, key, data)
    oss.put(source, 'data/typed.html', b'<p>', content_type='text/html; charset=utf-8', owner='team-a')
    objects['data/typed.html'] = b'<p>'
    dest = seaweed.bucket()
    run = tool.run(oss_job(oss, source, seaweed, dest, SrcPrefix='data', S3Prefix='from-oss', **SMALL_PARTS,
                           ListPageSize=2))
    assert run.code == 0, run.stderr
    expected = {'from-oss/' + k[5:]: v for k, v in objects.items() if k.startswith('data/')}
    assert bucket_contents(seaweed, dest) == expected
    assert run.report['verified_by'] == {'crc64ecma': 6}
    head = seaweed.client().head_object(Bucket=dest, Key='from-oss/typed.html')
    assert head['ContentType'] == 'text/html; charset=utf-8'
    assert head['Metadata']['owner'] == 'team-a'
    stored = oss.buckets[source]['data/typed.html']
    assert head['Metadata']['s3u-src-crc64ecma'] == str(stored.crc64)
    assert head['Metadata']['s3u-src-etag'] == stored.etag.lower()
    rerun = tool.run(oss_job(oss, source, seaweed, dest, SrcPrefix='data', S3Prefix='from-oss', **SMALL_PARTS))
    assert rerun.code == 0 and rerun.report['files_skipped'] == 6


def test_corrupted_oss_reads_are_caught_by_the_crc_and_never_land(oss, seaweed, oss_env):
    tool = oss_env
    source = oss.bucket()
    good, bad_small, bad_big = b'fine', random_bytes(1000, 3), random_bytes(11 * MiB, 4)
    oss.put(source, 'good', good)
    oss.put(source, 'bad-small', bad_small)
    oss.put(source, 'bad-big', bad_big)
    oss.corrupt.update({'bad-small', 'bad-big'})
    try:
        dest = seaweed.bucket()
        run = tool.run(oss_job(oss, source, seaweed, dest, **SMALL_PARTS))
    finally:
        oss.corrupt.difference_update({'bad-small', 'bad-big'})
    assert run.code == 1, run.stderr
    assert bucket_contents(seaweed, dest) == {'good': good}
    assert unfinished_uploads(seaweed, dest) == []
    assert sorted(f['key'] for f in run.report['failures']) == ['bad-big', 'bad-small']
    assert all('crc64ecma' in f['error'] for f in run.report['failures'])


def test_oss_credentials_from_ini_warn_when_readable_and_stay_secret(oss, seaweed, tool):
    source = oss.bucket()
    oss.put(source, 'k', b'v')
    dest = seaweed.bucket()
    run = tool.run(oss_job(oss, source, seaweed, dest, ali_access_key_id=OSS_KEY, ali_access_key_secret=OSS_SECRET))
    assert run.code == 0, run.stderr
    assert 'other users can read it' in run.stderr
    logs = ''.join(p.read_text() for p in (tool.folder / 'log').glob('*.log'))
    for text in (run.stderr, run.stdout, logs):
        assert OSS_SECRET not in text and OSS_KEY not in text
    assert bucket_contents(seaweed, dest) == {'k': b'v'}


@pytest.mark.parametrize('change, message', [
    ({'ali_access_key_secret': 'wrong/secret/0000000000'}, 'OSS credentials rejected'),
    ({'ali_SrcBucket': 'no-such-oss-bucket'}, 'does not exist'),
    ({'ali_endpoint': 'http://127.0.0.1:9'}, 'cannot reach the OSS endpoint'),
])
def test_oss_bad_input_exits_2(change, message, oss, seaweed, tool):
    source = oss.bucket()
    settings = oss_job(oss, source, seaweed, seaweed.bucket(), ali_access_key_id=OSS_KEY,
                       ali_access_key_secret=OSS_SECRET)
    settings.update(change)
    run = tool.run(settings)
    assert run.code == 2, run.stderr
    assert message in run.stderr and 'Traceback' not in run.stderr


def test_missing_oss2_is_one_clear_line(oss, seaweed, tool, tmp_path):
    shim = tmp_path / 'shim' / 'oss2'
    shim.mkdir(parents=True)
    (shim / '__init__.py').write_text('raise ImportError("no oss2 here")\n')
    tool.env['PYTHONPATH'] = str(tmp_path / 'shim')
    run = tool.run(oss_job(oss, oss.bucket(), seaweed, seaweed.bucket(), ali_access_key_id=OSS_KEY,
                           ali_access_key_secret=OSS_SECRET))
    assert run.code == 2
    assert 'pip install oss2' in run.stderr and 'Traceback' not in run.stderr

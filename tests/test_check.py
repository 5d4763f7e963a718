"""--check: a migration proven after the fact, key by key, without downloading the destination."""

from __future__ import annotations

import json

import pytest

from conftest import MiB, SMALL_PARTS, dest_settings, random_bytes, s3_to_s3, write_tree



def verdicts(run) -> dict:
    """key -> (verdict, how) from the run's stdout, checked against its JSON report."""
    printed = {}
    for line in run.stdout.splitlines():
        verdict, rest = line.split(None, 1)
        key, _, how = rest.partition('  (')
        printed[key.strip()] = (verdict, how.rstrip(')'))
    assert {k['key']: (k['verdict'], k['how']) for k in run.report['keys']} == printed
    counts = run.report['check']['counts']
    assert sum(counts.values()) == len(printed)
    return printed


@pytest.mark.parametrize('server_name, proof, small, multipart', [
    ('seaweed', {'crc64nvme'}, 'crc64nvme', 'crc64nvme'), ('moto', {'etag', 'stamp'}, 'md5', 'etag'),
    ('rclone', {'md5'}, 'md5', 'md5')])
def test_check_tells_same_different_missing_and_extra_with_the_proof_used(server_name, proof, small, multipart, request,
                                                                          tool, tmp_path):
    """SeaweedFS keeps every object's CRC64NVME, computed here over the file; moto has S3's MD5 ETags, the
    multipart one rebuilt from the part size stamped at upload (a mismatch proves a difference once the store has
    shown it makes them so, as kept.bin may have by then; else the stamp tells); rclone serve s3 the whole file's
    MD5. A change that keeps the size is caught by each."""
    server = request.getfixturevalue(server_name)
    files = {'big.bin': random_bytes(12 * MiB, 60), 'kept.bin': random_bytes(11 * MiB, 63), 'same.txt': b'same',
             'changed.txt': b'before',
             'sub/gone.txt': b'gone', 'skip.log': b'left out'}
    src = write_tree(tmp_path / 'src', files)
    bucket = server.bucket()
    settings = dest_settings(server, bucket, SrcDir=src, **SMALL_PARTS)
    assert tool.run(settings).code == 0
    (src / 'changed.txt').write_bytes(b'AFTER!')                     # same size, other bytes
    (src / 'sub' / 'gone.txt').unlink()
    (src / 'new.txt').write_bytes(b'new')
    big = bytearray(files['big.bin'])
    big[7 * MiB] ^= 1                                                   # one bit, in the second part
    (src / 'big.bin').write_bytes(bytes(big))
    run = tool.run(settings, '--check', '--exclude', '*.log')
    assert run.code == 1, run.stderr
    found = verdicts(run)
    assert found.pop('big.bin')[0] == 'different' and run.report['keys'][0]['how'] in proof
    assert found == {'kept.bin': ('same', multipart), 'changed.txt': ('different', small),
                     'new.txt': ('missing', ''), 'same.txt': ('same', small), 'sub/gone.txt': ('extra', '')}
    assert 'NOT the same' in run.stderr and tool.run(settings, '--check').report['check']['counts']['same'] == 3


def test_check_exits_0_when_everything_is_there_and_the_same(seaweed, tool, tmp_path):
    files = {'a.bin': random_bytes(11 * MiB, 61), 'b.txt': b'b', 'c/d.txt': b'd'}
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    settings = dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, ChecksumAlgorithm='none')
    assert tool.run(settings).code == 0
    seaweed.client().put_object(Bucket=bucket, Key='only-there.txt', Body=b'x')
    run = tool.run(settings, '--check')
    assert run.code == 0, run.stderr
    assert verdicts(run)['only-there.txt'] == ('extra', '')          # extra keys do not fail a check
    assert run.report['check']['counts'] == {'same': 3, 'different': 0, 'missing': 0, 'extra': 1, 'unknown': 0}
    assert 'every key is at the destination and the same' in run.stderr
    assert run.report['bytes_transferred'] == 0 and run.report['parts_uploaded'] == 0


def test_check_of_an_s3_copy_uses_the_sources_own_checksum_or_etag(seaweed, moto, tool):
    src_bucket, dst_bucket = seaweed.bucket('src'), moto.bucket()
    client = seaweed.client()
    client.put_object(Bucket=src_bucket, Key='plain.txt', Body=b'plain')
    client.put_object(Bucket=src_bucket, Key='big.bin', Body=random_bytes(11 * MiB, 62))
    settings = s3_to_s3(seaweed, src_bucket, moto, dst_bucket, **SMALL_PARTS)
    assert tool.run(settings).code == 0
    moto.client().put_object(Bucket=dst_bucket, Key='plain.txt', Body=b'PLAIN')       # overwritten there
    run = tool.run(settings, '--check')
    assert run.code == 1, run.stderr
    found = verdicts(run)
    assert found['plain.txt'] == ('different', 'md5')
    assert found['big.bin'][0] == 'same' and found['big.bin'][1] in ('crc64nvme', 'stamp'), found


def test_check_and_dry_run_do_not_go_together(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'a': b'a'})
    run = tool.run(dest_settings(seaweed, seaweed.bucket(), SrcDir=src), '--check', '--dry-run')
    assert run.code == 2 and 'cannot go together' in run.stderr


def test_the_check_report_is_json_with_every_key(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {f'k{i:02d}': b'%d' % i for i in range(30)})
    run = tool.run(dest_settings(seaweed, seaweed.bucket(), SrcDir=src), '--check')
    assert run.code == 1
    assert [k['key'] for k in run.report['keys']] == [f'k{i:02d}' for i in range(30)]
    assert {k['verdict'] for k in run.report['keys']} == {'missing'}
    json.dumps(run.report)

"""Starting like a native tool: a short job's first data request leaves one round trip after the S3 client
exists. A short job's first writes are its write check (a refusal still ends it in one line, exit 2), what a
run's write check learned of a store is remembered beside the journal and trusted until contradicted, and a
few files are asked by HEAD instead of paging through a large destination folder. Each request is held
0.3 s by the fault proxy: a stand-in for a long link's round trip."""

from __future__ import annotations

import json

from conftest import bucket_contents, dest_settings, write_tree

ROUND_TRIP = 0.3


def requests_of(proxy) -> list:
    """(seconds after the first request, method, target) of every request the proxy saw."""
    first = proxy.arrivals[0]
    return [(at - first, method, target) for at, (method, target, _agent) in zip(proxy.arrivals, proxy.agents)]


def verdicts(tool) -> list:
    """The write-check verdicts kept beside the journal."""
    facts = json.loads((tool.folder / 'log' / 's3_upload-stores.json').read_text())
    return [fact for fact in facts.values() if 'checksum' in fact]


def data_request_at(proxy, key: str) -> float:
    return next(at for at, method, target in requests_of(proxy) if method == 'PUT' and target.split('?')[0].endswith(key))


def one_file_job(seaweed, proxy, tmp_path, bucket: str, **more) -> dict:
    folder = write_tree(tmp_path / 'src', {'one.txt': b'x' * 1024})
    return {**dest_settings(seaweed, bucket, SrcDir=folder), 'DesEndPointURL': proxy.endpoint, **more}


def multipart_job(seaweed, proxy, tmp_path, bucket: str) -> tuple:
    """(source folder, settings) of a job of one 6 MiB file sent as a multipart upload: not a short job."""
    folder = write_tree(tmp_path / 'src', {'big.bin': b'b' * (6 * 1024 * 1024)})
    return folder, {**dest_settings(seaweed, bucket, SrcDir=folder, ResumableThreshold=5, ChunkSize=5),
                    'DesEndPointURL': proxy.endpoint}


def test_a_one_file_job_sends_its_data_one_round_trip_after_it_starts_without_a_probe(seaweed, proxy, tool, tmp_path):
    bucket = seaweed.bucket()
    proxy.add('delay', seconds=ROUND_TRIP, times=-1)
    settings = one_file_job(seaweed, proxy, tmp_path, bucket)
    first = tool.run(settings)
    assert first.code == 0, first.stderr
    assert data_request_at(proxy, '/one.txt') < 1.5 * ROUND_TRIP
    assert not any('write-check' in target for _, _, target in requests_of(proxy))   # its write is the check
    assert seaweed.client().get_object(Bucket=bucket, Key='one.txt')['Body'].read() == b'x' * 1024


def test_a_larger_job_probes_once_and_its_reruns_trust_what_was_learned(seaweed, proxy, tool, tmp_path):
    bucket = seaweed.bucket()
    folder, settings = multipart_job(seaweed, proxy, tmp_path, bucket)
    assert tool.run(settings).code == 0
    assert any(method == 'POST' and 'write-check' in target for _, method, target in requests_of(proxy))
    assert len(verdicts(tool)) == 1
    (folder / 'big.bin').write_bytes(b'c' * (7 * 1024 * 1024))
    proxy.agents.clear()
    proxy.arrivals.clear()
    again = tool.run(settings)
    assert again.code == 0, again.stderr
    assert not any('write-check' in target for _, _, target in requests_of(proxy))   # remembered, not probed
    assert seaweed.client().get_object(Bucket=bucket, Key='big.bin')['Body'].read() == b'c' * (7 * 1024 * 1024)


def test_a_short_job_whose_writes_are_refused_ends_in_the_write_checks_one_line(seaweed, proxy, tool, tmp_path):
    bucket = seaweed.bucket()
    ran = tool.run(one_file_job(seaweed, proxy, tmp_path, bucket, DesProfileName='seaweed_readonly'))
    assert ran.code == 2, ran.stderr
    errors = [line for line in ran.stderr.splitlines() if 'error' in line.lower()]
    assert len(errors) == 1 and 'write' in errors[0] and 'Traceback' not in ran.stderr
    assert not seaweed.client().list_objects_v2(Bucket=bucket).get('Contents')
    assert not (tool.folder / 'log' / 's3_upload-stores.json').exists()        # nothing learned from a refusal


def test_what_was_learned_is_checked_again_once_contradicted(seaweed, proxy, tool, tmp_path):
    bucket = seaweed.bucket()
    folder, settings = multipart_job(seaweed, proxy, tmp_path, bucket)
    assert tool.run(settings).code == 0
    (folder / 'big.bin').write_bytes(b'z' * (6 * 1024 * 1024 + 1))
    refused = tool.run({**settings, 'DesProfileName': 'seaweed_readonly'})   # the same store, no longer writable
    assert refused.code == 2 and 'refuses our writes now' in refused.stderr, refused.stderr
    assert verdicts(tool) == []
    proxy.agents.clear()
    proxy.arrivals.clear()
    assert tool.run(settings).code == 0
    assert any('write-check' in target for _, _, target in requests_of(proxy))       # probed again


def test_a_few_files_ask_head_instead_of_paging_through_a_large_destination_folder(seaweed, proxy, tool, tmp_path):
    bucket = seaweed.bucket()
    client = seaweed.client()
    for number in range(30):
        client.put_object(Bucket=bucket, Key=f'a{number:03}.txt', Body=b'old')
    client.put_object(Bucket=bucket, Key='zz-same.txt', Body=b's' * 100)
    folder = write_tree(tmp_path / 'src', {'zz-new.txt': b'n' * 100, 'zz-same.txt': b's' * 100})
    ran = tool.run({**dest_settings(seaweed, bucket, SrcDir=folder, ListPageSize=5), 'DesEndPointURL': proxy.endpoint})
    assert ran.code == 0, ran.stderr
    seen = requests_of(proxy)
    assert not any('continuation-token' in target for _, _, target in seen)      # one listing page, no more
    assert {target for _, method, target in seen if method == 'HEAD'} >= {f'/{bucket}/zz-new.txt', f'/{bucket}/zz-same.txt'}
    assert ran.report['files_transferred'] == 1 and ran.report['files_skipped'] == 1


def store_facts(tool) -> dict:
    """What the runs learned of the endpoints (not of a bucket and its write options)."""
    facts = json.loads((tool.folder / 'log' / 's3_upload-stores.json').read_text())
    return {json.loads(name)[0]: fact for name, fact in facts.items() if len(json.loads(name)) == 1}


def versioned_moto_job(moto, proxy_for, folder) -> tuple:
    """(bucket, client, proxy, settings) of a job from folder into a new versioned bucket on moto, behind a
    proxy (moto honours If-None-Match; its versions show what was written again)."""
    bucket = moto.bucket()
    client = moto.client()
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={'Status': 'Enabled'})
    front = proxy_for(moto)
    return bucket, client, front, {**dest_settings(moto, bucket, SrcDir=folder), 'DesEndPointURL': front.endpoint}


def restart_log(front) -> None:
    front.clear()
    front.agents.clear()
    front.arrivals.clear()


def test_a_few_small_files_go_with_the_first_requests_and_one_already_there_is_not_written_again(
        moto, proxy_for, tool, tmp_path):
    folder = write_tree(tmp_path / 'src', {'one.txt': b'1' * 1024})
    bucket, client, front, settings = versioned_moto_job(moto, proxy_for, folder)
    assert tool.run(settings).code == 0
    assert store_facts(tool)[front.endpoint]['creates_buckets'] is False       # learnt: no write makes a bucket
    write_tree(folder, {'two.txt': b'2' * 2048})
    restart_log(front)
    front.add('delay', seconds=ROUND_TRIP, times=-1)
    ran = tool.run(settings)
    assert ran.code == 0, ran.stderr
    assert data_request_at(front, '/two.txt') < 0.5 * ROUND_TRIP        # beside the check, not one round trip after
    assert data_request_at(front, '/one.txt') < 0.5 * ROUND_TRIP        # sent on condition nothing is there
    assert ran.report['files_transferred'] == 1 and ran.report['files_skipped'] == 1
    versions = client.list_object_versions(Bucket=bucket)['Versions']
    assert sorted(version['Key'] for version in versions) == ['one.txt', 'two.txt']     # one.txt not written again
    assert store_facts(tool)[front.endpoint]['conditional_writes'] is True
    write_tree(folder, {'one.txt': b'one, changed'})
    changed = tool.run(settings)
    assert changed.code == 0 and changed.report['files_transferred'] == 1, changed.stderr
    assert client.get_object(Bucket=bucket, Key='one.txt')['Body'].read() == b'one, changed'


def test_a_store_that_ignores_the_condition_is_remembered_and_gets_no_write_before_its_head(
        rclone, proxy_for, tool, tmp_path):
    bucket = rclone.bucket()
    front = proxy_for(rclone)
    folder = write_tree(tmp_path / 'src', {'one.txt': b'1' * 1024})
    settings = {**dest_settings(rclone, bucket, SrcDir=folder), 'DesEndPointURL': front.endpoint}
    assert tool.run(settings).code == 0
    write_tree(folder, {'one.txt': b'one, changed'})
    front.add('delay', method='HEAD', seconds=ROUND_TRIP)         # the file goes before its HEAD answers,
    front.add('delay', method='PUT', seconds=2 * ROUND_TRIP)      # which finds the old object there first
    assert tool.run(settings).code == 0
    assert store_facts(tool)[front.endpoint]['conditional_writes'] is False     # rclone wrote over it all the same
    assert rclone.client().get_object(Bucket=bucket, Key='one.txt')['Body'].read() == b'one, changed'
    write_tree(folder, {'one.txt': b'one, changed again'})
    restart_log(front)
    front.add('delay', seconds=ROUND_TRIP, times=-1)
    assert tool.run(settings).code == 0
    assert data_request_at(front, '/one.txt') > 0.9 * ROUND_TRIP        # after its HEAD answered
    assert rclone.client().get_object(Bucket=bucket, Key='one.txt')['Body'].read() == b'one, changed again'


def test_the_first_writes_wait_for_the_check_on_a_store_that_makes_missing_buckets(seaweed, proxy, tool, tmp_path):
    assert tool.run(one_file_job(seaweed, proxy, tmp_path, seaweed.bucket())).code == 0
    assert store_facts(tool)[proxy.endpoint]['creates_buckets'] is True         # SeaweedFS makes a bucket on a PUT
    typo = 'no-such-bucket-' + seaweed.bucket()
    ran = tool.run(one_file_job(seaweed, proxy, tmp_path, typo))
    assert ran.code == 2 and 'does not exist' in ran.stderr, ran.stderr
    assert typo not in [b['Name'] for b in seaweed.client().list_buckets()['Buckets']]      # not made by a write


def test_a_missing_bucket_refuses_a_job_whose_first_writes_went_beside_the_check(moto, proxy_for, tool, tmp_path):
    front = proxy_for(moto)
    folder = write_tree(tmp_path / 'src', {'one.txt': b'1' * 1024})
    assert tool.run({**dest_settings(moto, moto.bucket(), SrcDir=folder), 'DesEndPointURL': front.endpoint}).code == 0
    restart_log(front)
    for method in ('GET', 'HEAD'):                  # the check and the HEAD answer after the PUT has gone
        front.add('delay', method=method, seconds=ROUND_TRIP, times=-1)
    ran = tool.run({**dest_settings(moto, 'no-such-bucket-here', SrcDir=folder), 'DesEndPointURL': front.endpoint})
    assert ran.code == 2, ran.stderr
    assert any(method == 'PUT' for method, _target, _agent in front.agents)     # it went beside the check
    lines = [line for line in ran.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'does not exist' in lines[0] and 'Traceback' not in ran.stderr, ran.stderr


# A short job of more files than are asked by HEAD: its destination is listed.
FORTY_FILES = {f'f{number:02}.txt': bytes([65 + number % 26]) * (1000 + number) for number in range(40)}


def test_a_short_jobs_first_writes_go_beside_its_listing_and_objects_already_there_are_not_written_again(
        moto, proxy_for, tool, tmp_path):
    folder = write_tree(tmp_path / 'src', FORTY_FILES)
    bucket, client, front, settings = versioned_moto_job(moto, proxy_for, folder)
    assert tool.run({**settings, 'SrcFileIndex': 'f00.txt'}).code == 0        # the store is known from now on
    write_tree(folder, {'f07.txt': b'changed since it was copied'})
    client.put_object(Bucket=bucket, Key='f07.txt', Body=b'7' * 1007)        # there, and not this file
    restart_log(front)
    front.add('delay', seconds=ROUND_TRIP, times=-1)
    ran = tool.run(settings)
    assert ran.code == 0, ran.stderr
    assert data_request_at(front, '/f01.txt') < 0.5 * ROUND_TRIP           # not after the listing's round trip
    assert ran.report['files_transferred'] == 39 and ran.report['files_skipped'] == 1
    versions = [version['Key'] for version in client.list_object_versions(Bucket=bucket)['Versions']]
    assert versions.count('f00.txt') == 1                                   # found there: not written again
    assert client.get_object(Bucket=bucket, Key='f07.txt')['Body'].read() == b'changed since it was copied'
    assert sorted(bucket_contents(moto, bucket)) == sorted(FORTY_FILES)


def test_a_store_that_ignores_the_condition_is_found_out_by_the_listing(rclone, proxy_for, tool, tmp_path):
    bucket = rclone.bucket()
    front = proxy_for(rclone)
    folder = write_tree(tmp_path / 'src', FORTY_FILES)
    settings = {**dest_settings(rclone, bucket, SrcDir=folder), 'DesEndPointURL': front.endpoint}
    assert tool.run({**settings, 'SrcFileIndex': 'f00.txt'}).code == 0
    rclone.client().put_object(Bucket=bucket, Key='f07.txt', Body=b'another object')
    front.add('delay', method='GET', match='list-type', seconds=ROUND_TRIP)    # the files go before it answers,
    front.add('delay', method='PUT', seconds=2 * ROUND_TRIP, times=-1)          # and it sees f07.txt before them
    assert tool.run(settings).code == 0
    assert store_facts(tool)[front.endpoint]['conditional_writes'] is False
    assert bucket_contents(rclone, bucket) == FORTY_FILES


def test_botocores_models_are_kept_between_runs_and_a_damaged_copy_is_made_again(seaweed, tool, tmp_path):
    import marshal
    tool.env = {**tool.env, 'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    folder = write_tree(tmp_path / 'src', {'one.txt': b'1'})
    settings = dest_settings(seaweed, seaweed.bucket(), SrcDir=folder)
    assert tool.run(settings).code == 0
    [kept] = (tmp_path / 'cache' / 's3_upload').iterdir()
    assert any(key[:2] == ('load_service_model', 's3') for key in marshal.loads(kept.read_bytes()))
    kept.write_bytes(b'not marshal data')
    again = tool.run(settings)
    assert again.code == 0, again.stderr
    assert any(key[:2] == ('load_service_model', 's3') for key in marshal.loads(kept.read_bytes()))

"""The command line as users meet it: exit codes, one-line errors before any transfer, --help, --report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import (SMALL_PARTS, TOOL, bucket_contents, dest_settings, free_port, leftover_upload,
                      unfinished_uploads, write_tree)


def one_error_line(run) -> str:
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert 'Traceback' not in run.stderr, run.stderr
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith('s3_upload: error: '), run.stderr
    return lines[0]


def test_help_documents_the_interface():
    done = subprocess.run([sys.executable, str(TOOL), '--help'], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for word in ('--nogui', '--gui', '--config', '--report', '--set', '--demo', 'ChunkSize', 'MaxThread',
                 'ResumableThreshold', 'SrcPrefix', 'exit codes'):
        assert word in done.stdout, word


@pytest.mark.parametrize('case', [
    'missing profile', 'wrong keys', 'missing bucket', 'unreachable endpoint', 'read-only credentials',
    'missing SrcDir', 'SrcDir is a file', 'missing single file', 'bad ChunkSize', 'unknown --set key',
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'f.txt': b'data'})
    bucket = seaweed.bucket()
    settings = dest_settings(seaweed, bucket, SrcDir=src)
    extra = []
    expected = {
        'missing profile': ('DesProfileName', 'nobody', "profile 'nobody'"),
        'wrong keys': ('DesProfileName', 'wrong_keys', 'credentials rejected'),
        'missing bucket': ('DesBucket', 'no-such-bucket-here', 'does not exist'),
        'unreachable endpoint': ('DesEndPointURL', f'http://127.0.0.1:{free_port()}', 'cannot reach'),
        'read-only credentials': ('DesProfileName', 'seaweed_readonly', 'no permission to write'),
        'missing SrcDir': ('SrcDir', tmp_path / 'nope', 'source folder not found'),
        'SrcDir is a file': ('SrcDir', src / 'f.txt', 'is a file'),
        'missing single file': ('SrcFileIndex', 'nope.txt', 'source file not found'),
        'bad ChunkSize': ('ChunkSize', '3', 'ChunkSize'),
        'unknown --set key': (None, None, 'unknown key'),
    }[case]
    key, value, message = expected
    if key:
        settings[key] = value
    else:
        extra = ['--set', 'ChunkSizee=8']
    run = tool.run(settings, *extra)
    assert run.code == 2, run.stderr
    assert message in one_error_line(run)
    assert run.report is None
    assert bucket_contents(seaweed, bucket) == {}
    assert unfinished_uploads(seaweed, bucket) == []
    assert not (tool.folder / 'log').exists()          # a refused run leaves no log folder, no empty log file


def test_help_fits_the_terminal_and_names_the_fleet_commands():
    import os
    done = subprocess.run([sys.executable, str(TOOL), '--help'], capture_output=True, text=True, timeout=60,
                          env={**os.environ, 'COLUMNS': '80'})
    assert done.returncode == 0
    assert [line for line in done.stdout.splitlines() if len(line) > 80] == []
    assert 'usage: s3_upload.py' in done.stdout and 's3_upload_cluster.py {jobsender,worker,status}' in done.stdout


@pytest.mark.parametrize('where', ['missing folder', 'a folder', 'below a file'])
def test_a_report_that_cannot_be_written_is_found_before_any_transfer(where, seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'f.txt': b'data'})
    bucket = seaweed.bucket()
    report = {'missing folder': tmp_path / 'nope' / 'r.json', 'a folder': tmp_path,
              'below a file': src / 'f.txt' / 'r.json'}[where]
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src), '--report', str(report))
    assert run.code == 2, run.stderr
    assert '--report' in one_error_line(run)
    assert bucket_contents(seaweed, bucket) == {}


def test_the_log_file_ends_with_the_summary_the_console_shows(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'a': b'1', 'b': b'22'})
    run = tool.run(dest_settings(seaweed, seaweed.bucket(), SrcDir=src))
    assert run.code == 0, run.stderr
    summary = run.stderr.split('\n')
    start = next(i for i, line in enumerate(summary) if line.startswith('DONE in'))
    summary = [line for line in summary[start:] if line]
    (log,) = (tool.folder / 'log').glob('s3_upload-*.log')
    tail = [line.split(' INFO MainThread ', 1)[1] for line in log.read_text().splitlines()[-len(summary):]]
    assert tail == summary


def test_missing_config_file(tool):
    done = subprocess.run([sys.executable, str(TOOL), '--nogui', '--config', str(tool.folder / 'none.ini')],
                          capture_output=True, text=True, timeout=60, env=tool.env)
    assert done.returncode == 2
    assert done.stderr.startswith('s3_upload: error: config file not found') and 'Traceback' not in done.stderr


def test_some_files_failing_gives_exit_1_and_the_rest_done(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'good.txt': b'good', 'z/also-good.txt': b'also'})
    (src / 'broken-link').symlink_to(src / 'missing-target')
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src))
    assert run.code == 1, run.stderr
    assert bucket_contents(seaweed, bucket) == {'good.txt': b'good', 'z/also-good.txt': b'also'}
    report = run.report
    assert report['files_failed'] == 1 and report['files_transferred'] == 2
    assert report['failures'][0]['key'] == 'broken-link' and 'broken symbolic link' in report['failures'][0]['error']
    assert 'FAILED broken-link' in run.stderr


def test_report_fields(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'a': b'1', 'b': b'22'})
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, MaxThread=10), '--set', 'S3Prefix=from-cli')
    assert run.code == 0, run.stderr
    for field in ('files_total', 'files_transferred', 'files_skipped', 'files_failed', 'bytes_total',
                  'bytes_transferred', 'bytes_resumed', 'parts_uploaded', 'parts_resumed', 'seconds', 'failures'):
        assert field in run.report, field
    assert run.report['bytes_total'] == 3 and run.report['bytes_transferred'] == 3
    assert set(bucket_contents(seaweed, bucket)) == {'from-cli/a', 'from-cli/b'}
    json.dumps(run.report)


def test_gui_flag_without_gui_exits_2(tool):
    done = subprocess.run([sys.executable, str(TOOL), '--gui', '--config', str(tool.folder / 'x.ini')],
                          capture_output=True, text=True, timeout=60, env={**tool.env, 'DISPLAY': ''})
    assert done.returncode == 2 and done.stderr.startswith('s3_upload: error:')


def run_in_terminal(command, env, cwd, answer: bytes = b'', timeout: float = 120):
    """Run command on a pseudo-terminal; type answer when the CLEAN prompt shows. Returns (code, output)."""
    import os
    import pty
    import select
    import time
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execve(command[0], command, env)
    output, answered, deadline = b'', False, time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        if not answered and b'Type CLEAN' in output:
            os.write(fd, answer + b'\n')
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode('utf-8', 'replace')


@pytest.mark.parametrize('answer, resumed', [(b'CLEAN', 0), (b'', 1)])
def test_dont_ask_me_to_clean_false_offers_to_abort_this_jobs_uploads(answer, resumed, seaweed, tool, tmp_path):
    from conftest import random_bytes
    data = random_bytes(12 * 1024 * 1024, 11)
    src = write_tree(tmp_path / 'src', {'f.bin': data})
    bucket = seaweed.bucket()
    leftover_upload(seaweed, bucket, 'job/f.bin', {1: data[:5 * 1024 * 1024]})
    foreign = leftover_upload(seaweed, bucket, 'other/g.bin', {})
    settings = dest_settings(seaweed, bucket, SrcDir=src, S3Prefix='job', **SMALL_PARTS, DontAskMeToClean=False,
                             BandwidthLimit=4)
    command = tool.command(settings)
    code, output = run_in_terminal(command, tool.env, tool.folder, answer)
    assert code == 0, output
    assert '1 unfinished upload(s) of this job' in output
    assert 'ETA' in output and '%' in output          # the live progress bar
    report = json.loads((tool.folder / f'report{tool.runs}.json').read_text())
    assert report['parts_resumed'] == resumed
    assert bucket_contents(seaweed, bucket) == {'job/f.bin': data}
    assert [u['UploadId'] for u in unfinished_uploads(seaweed, bucket)] == [foreign]


@pytest.mark.parametrize('signame, code', [('SIGINT', 130), ('SIGTERM', 143)])
def test_graceful_stop_exit_code_and_resume(signame, code, seaweed, tool, tmp_path):
    import signal
    from conftest import random_bytes, wait_for_parts
    data = random_bytes(40 * 1024 * 1024, 12)
    src = write_tree(tmp_path / 'src', {'s.bin': data, 'small.txt': b'small'})
    bucket = seaweed.bucket()
    settings = dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=2, BandwidthLimit=8)
    process = tool.start(settings)
    assert wait_for_parts(seaweed, bucket, 's.bin', 2)
    process.send_signal(getattr(signal, signame))
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err.decode()
    stopped = json.loads((tool.folder / f'report{tool.runs}.json').read_text())
    assert stopped['stopped'] is True and stopped['files_transferred'] < 2
    assert b'run the same command again to resume' in err
    assert (b'press Ctrl-C again' in err) == (signame == 'SIGINT')
    assert (b'send SIGTERM again' in err) == (signame == 'SIGTERM')
    settings['BandwidthLimit'] = 0
    run = tool.run(settings)
    assert run.code == 0, run.stderr
    assert run.report['parts_resumed'] >= 2
    assert bucket_contents(seaweed, bucket) == {'s.bin': data, 'small.txt': b'small'}


def test_no_connection_pool_warnings_at_high_concurrency(seaweed, tool, tmp_path):
    from conftest import random_bytes
    files = {f'f{i}.bin': random_bytes(11 * 1024 * 1024, i) for i in range(4)}
    files.update({f's{i}.txt': b'x' * i for i in range(40)})
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=3, MaxParallelFile=6,
                                 LoggingLevel='DEBUG'))
    assert run.code == 0, run.stderr[-3000:]
    assert 'Connection pool is full' not in run.stderr
    assert bucket_contents(seaweed, bucket) == files
    logs = ''.join(path.read_text(errors='replace') for path in (tool.folder / 'log').glob('*.log'))
    assert 'Authorization' in run.stderr + logs          # botocore's DEBUG output really is there ...
    for secret in (seaweed.access_key, seaweed.secret_key):
        assert secret not in run.stderr and secret not in run.stdout and secret not in logs   # ... redacted


def test_dry_run_prints_the_plan_and_changes_nothing(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'new.txt': b'new', 'same.txt': b'same', 'skip.tmp': b'x',
                                        'big.bin': b'b' * (6 * 1024 * 1024)})
    bucket = seaweed.bucket()
    seaweed.client().put_object(Bucket=bucket, Key='same.txt', Body=b'SAME')
    ignore = tmp_path / 'ignore.txt'
    ignore.write_text('*.tmp\n')
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src, IgnoreListFile=ignore, **SMALL_PARTS), '--dry-run')
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert 'send     new.txt  3' in lines and 'send     big.bin  6291456' in lines
    assert any(line.startswith('skip     same.txt') for line in lines)
    assert any(line.startswith('exclude  skip.tmp') for line in lines)
    assert lines[-1].startswith('dry run: 2 files to send (6.0 MiB), 1 to skip, 1 excluded, 0 failing')
    assert bucket_contents(seaweed, bucket) == {'same.txt': b'SAME'}
    assert unfinished_uploads(seaweed, bucket) == []
    assert run.report['dry_run'] is True and run.report['files_transferred'] == 0


def test_include_exclude_on_the_command_line(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'a.txt': b'a', 'b.log': b'b', 'logs/c.txt': b'c', 'logs/d.log': b'd'})
    bucket = seaweed.bucket()
    run = tool.run(dest_settings(seaweed, bucket, SrcDir=src), '--exclude', '*', '--include', '*.txt',
                   '--exclude', 'logs/*')
    assert run.code == 0, run.stderr
    assert bucket_contents(seaweed, bucket) == {'a.txt': b'a'}
    assert run.report['files_excluded'] == 3 and run.report['files_total'] == 1


@pytest.mark.parametrize('level', ['DEBUG', 'INFO', 'WARNING', 'ERROR'])
def test_secrets_never_appear_in_any_output(level, moto, tool, tmp_path):
    from conftest import MOTO_KEY, MOTO_SECRET, SESSION_TOKEN, random_bytes
    src = write_tree(tmp_path / 'src', {'a.txt': b'a', 'b.bin': random_bytes(6 * 1024 * 1024, 40)})
    bucket = moto.bucket()
    settings = dest_settings(moto, bucket, SrcDir=src, **SMALL_PARTS, LoggingLevel=level, DesProfileName='moto_token')
    run = tool.run(settings)
    assert run.code == 0, run.stderr[-2000:]
    failing = tool.run({**settings, 'DesBucket': 'no-such-bucket'})          # an error path too
    assert failing.code == 2
    logs = ''.join(path.read_text(errors='replace') for path in (tool.folder / 'log').glob('*'))
    reports = ''.join(path.read_text() for path in tool.folder.glob('report*.json'))
    everything = run.stdout + run.stderr + failing.stdout + failing.stderr + logs + reports
    for secret in (MOTO_KEY, MOTO_SECRET, SESSION_TOKEN):
        assert secret not in everything
    if level == 'DEBUG':
        assert 'x-amz-security-token' in everything.lower()     # the token header was logged, redacted


def test_log_files_are_private(seaweed, tool, tmp_path):
    import stat
    src = write_tree(tmp_path / 'src', {'a': b'a'})
    assert tool.run(dest_settings(seaweed, seaweed.bucket(), SrcDir=src)).code == 0
    for path in (tool.folder / 'log').iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_tls_is_verified_unless_turned_off_with_a_warning(seaweed, tool, tmp_path):
    src = write_tree(tmp_path / 'src', {'a': b'a'})
    https = seaweed.endpoint.replace('http://', 'https://')       # a plain-HTTP port spoken to with TLS
    run = tool.run(dest_settings(seaweed, seaweed.bucket(), SrcDir=src, DesEndPointURL=https))
    assert run.code == 2 and 'TLS error' in one_error_line(run)
    off = tool.run(dest_settings(seaweed, seaweed.bucket(), SrcDir=src, VerifyTLS=False))
    assert off.code == 0 and 'TLS certificate verification is OFF' in off.stderr


def test_stop_waits_a_few_seconds_for_stuck_parts_then_exits_resumable(seaweed, tool, tmp_path):
    import signal
    import time
    from conftest import random_bytes, wait_for_parts
    from fault_proxy import FaultProxy
    proxy = FaultProxy(seaweed.endpoint)
    try:
        data = random_bytes(16 * 1024 * 1024, 41)
        src = write_tree(tmp_path / 'src', {'stuck.bin': data})
        bucket = seaweed.bucket()
        settings = dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1, RequestTimeout=300,
                                 DesEndPointURL=proxy.endpoint)
        proxy.add('stall', 'PUT', r'partNumber=2', seconds=60)
        process = tool.start(settings)
        assert wait_for_parts(seaweed, bucket, 'stuck.bin', 2)        # part 2 is stored, its answer stalls
        started = time.time()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=40)
        assert process.returncode == 130, err.decode()
        assert time.time() - started < 25
        assert b'did not finish within' in err and b'STOPPED in' in err
        proxy.clear()
        run = tool.run({**settings, 'RequestTimeout': 60})
        # Part 1 is kept; part 2 is stored but its answer never arrived: read again, it matches and is kept.
        assert run.code == 0 and run.report['parts_resumed'] == 2 and run.report['parts_uploaded'] == 2
        assert bucket_contents(seaweed, bucket) == {'stuck.bin': data}
    finally:
        proxy.stop()


def test_second_ctrl_c_exits_at_once_with_the_summary_and_report_of_what_was_done(seaweed, tool, tmp_path):
    import signal
    import time
    from conftest import random_bytes, wait_for_parts
    from fault_proxy import FaultProxy
    proxy = FaultProxy(seaweed.endpoint)
    try:
        src = write_tree(tmp_path / 'src', {'s.bin': random_bytes(16 * 1024 * 1024, 42)})
        bucket = seaweed.bucket()
        proxy.add('stall', 'PUT', r'partNumber=2', seconds=60)          # the first Ctrl-C cannot end the run
        process = tool.start(dest_settings(seaweed, bucket, SrcDir=src, **SMALL_PARTS, MaxThread=1,
                                           RequestTimeout=300, DesEndPointURL=proxy.endpoint))
        assert wait_for_parts(seaweed, bucket, 's.bin', 2)
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        started = time.time()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    finally:
        proxy.stop()
    assert process.returncode == 130 and time.time() - started < 3
    assert b'asked again: quitting' in err
    assert b'STOPPED in' in err and b'run the same command again to resume' in err     # what was done, still said
    report = json.loads((tool.folder / f'report{tool.runs}.json').read_text())
    assert report['stopped'] is True and report['files_total'] == 1 and report['parts_uploaded'] == 1


def test_a_stop_asked_for_after_every_file_is_done_reports_done(seaweed, tool, tmp_path):
    """Ctrl-C while the run only waits for its write check's abort: nothing was stopped, so nothing says so."""
    import signal
    import time
    from fault_proxy import FaultProxy
    proxy = FaultProxy(seaweed.endpoint)
    try:
        src = write_tree(tmp_path / 'src', {'a.txt': b'a', 'b.txt': b'b'})
        bucket = seaweed.bucket()
        proxy.add('stall', 'DELETE', r'\.s3_upload-write-check', seconds=4)
        process = tool.start(dest_settings(seaweed, bucket, SrcDir=src, DesEndPointURL=proxy.endpoint))
        deadline = time.time() + 30
        while len(bucket_contents(seaweed, bucket)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        proxy.stop()
    assert process.returncode == 0, err.decode()
    assert b'DONE in' in err and b'STOPPED' not in err and b'to resume' not in err


HOSTILE = {
    # name: (settings change, files, expected exit code, text expected on stderr)
    'config path is a folder': ({'__config__': 'folder'}, {}, 2, 'cannot read config file'),
    'unknown key warns with did-you-mean': ({'MaxThreads': '4'}, {'a': b'a'}, 0, 'did you mean MaxThread?'),
    'negative threads': ({'MaxThread': '-2'}, {}, 2, 'MaxThread'),
    'MaxThread 10000': ({'MaxThread': '10000'}, {}, 2, 'from 1 to 256'),
    'ChunkSize 0': ({'ChunkSize': '0'}, {}, 2, 'ChunkSize'),
    'unknown StorageClass': ({'StorageClass': 'FROZEN'}, {}, 2, 'StorageClass'),
    'unknown JobType': ({'JobType': 'FTP_TO_S3'}, {}, 2, 'JobType'),
    'access denied listing': ({'DesProfileName': 'seaweed_isolated'}, {}, 2, 'access denied listing'),
    'empty source folder': ({}, {}, 0, '0 transferred, 0 skipped, 0 failed of 0 files'),
    'quoted SrcDir': ({'__quoted__': True}, {}, 2, 'leave out the quotes'),
    'symbolic link loop': ({'__loop__': True}, {'d/f': b'f'}, 0, 'symbolic link loop'),
}


@pytest.mark.parametrize('case', list(HOSTILE))
def test_hostile_input(case, seaweed, tool, tmp_path):
    change, files, code, text = HOSTILE[case]
    src = write_tree(tmp_path / 'src', files)
    src.mkdir(exist_ok=True)
    if change.pop('__loop__', False):
        (src / 'd' / 'back').symlink_to(src)
    bucket = seaweed.bucket()
    settings = dest_settings(seaweed, bucket, SrcDir=f'"{src}"' if change.pop('__quoted__', False) else src)
    if change.pop('__config__', None):
        done = subprocess.run([sys.executable, str(TOOL), '--nogui', '--config', str(tmp_path)],
                              capture_output=True, text=True, timeout=60, env=tool.env)
        assert done.returncode == 2 and text in done.stderr and 'Traceback' not in done.stderr
        return
    settings.update(change)
    run = tool.run(settings)
    assert run.code == code, run.stderr
    assert text in run.stderr and 'Traceback' not in run.stderr
    if code == 2:
        one_error_line(run)
        assert bucket_contents(seaweed, bucket) == {}


def test_the_bar_never_passes_100_percent_and_says_what_it_waits_for():
    from s3_upload import Progress, ProgressDisplay
    progress = Progress()
    progress.listing_done = True
    progress.add(files_total=2, bytes_total=100, bytes_transferred=150)    # e.g. bytes counted twice
    assert ' 100.0% 100 B/100 B ' in ProgressDisplay(progress).line()
    progress.add(completing=2)
    assert 'completing 2 uploads' in ProgressDisplay(progress).line()


def test_a_stop_that_stopped_nothing_is_not_reported():
    from s3_upload import Progress, Report
    progress = Progress()
    progress.add(files_total=2, files_transferred=1)
    assert Report.from_progress(progress, True).stopped              # the listing never finished
    progress.listing_done = True
    assert Report.from_progress(progress, True).stopped              # one file still undone
    progress.add(files_skipped=1)
    report = Report.from_progress(progress, True)
    assert not report.stopped and report.exit_code == 0 and 'resume' not in report.summary()


def test_the_tool_runs_alone_and_points_to_the_fleets_own_file(tool, tmp_path):
    """Copied alone onto a server, s3_upload.py is the whole single-node tool; the fleet commands say where
    they live instead of failing with a traceback."""
    import shutil
    alone = tmp_path / 'alone'
    alone.mkdir()
    shutil.copy(TOOL, alone / 's3_upload.py')
    shown = subprocess.run([sys.executable, str(alone / 's3_upload.py'), '--help'], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and '--check' in shown.stdout
    run = subprocess.run([sys.executable, str(alone / 's3_upload.py'), 'worker', '--config', 'x.ini'],
                         capture_output=True, text=True, timeout=60, env=tool.env, cwd=tmp_path)
    assert run.returncode == 2 and 'put s3_upload_cluster.py beside s3_upload.py' in one_error_line(run)


def test_rate_and_eta_count_bytes_copied_inside_the_store_for_the_bar_and_the_window_alike():
    import time
    from s3_upload import Progress, ProgressDisplay, RateMeter
    progress = Progress()
    progress.listing_done = True
    progress.add(files_total=1, bytes_total=100 * 1024 ** 2)
    meter, display = RateMeter(progress), ProgressDisplay(progress)
    meter.read(), display.line()
    time.sleep(0.2)
    progress.add(bytes_copied_server_side=10 * 1024 ** 2)          # an S3 -> S3 copy inside the store
    reading = meter.read()
    assert reading.rate > 10 * 1024 ** 2 and reading.eta != '--:--:--'
    assert 'ETA 00:00:' in display.line()                          # the command line's bar says the same

"""The Tkinter front end on a virtual screen (Xvfb, started here): fill the form, start, stop, resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import MiB, TOOL, bucket_contents, parts_of, random_bytes, wait_for_parts, write_tree
from s3_upload import read_settings



@pytest.fixture(scope='session')
def display():
    """An Xvfb screen for the whole session; DISPLAY points at it."""
    xvfb = shutil.which('Xvfb')
    assert xvfb, 'Xvfb is needed for the GUI tests: apt-get install xvfb'
    number = 90 + os.getpid() % 100
    process = subprocess.Popen([xvfb, f':{number}', '-screen', '0', '1280x800x24', '-nolisten', 'tcp'],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not os.path.exists(f'/tmp/.X11-unix/X{number}') and time.time() < deadline:
        time.sleep(0.05)
    previous = os.environ.get('DISPLAY')
    os.environ['DISPLAY'] = f':{number}'
    yield f':{number}'
    if previous is None:
        os.environ.pop('DISPLAY', None)
    else:
        os.environ['DISPLAY'] = previous
    process.terminate()
    process.wait()


@pytest.fixture
def window(display, aws_files, monkeypatch, tmp_path):
    """A fresh App on the virtual screen, with the test profiles and a scratch ini."""
    import tkinter as tk
    import s3_upload
    for key, value in aws_files.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv('AWS_EC2_METADATA_DISABLED', 'true')
    ini = tmp_path / 'gui.ini'
    ini.write_text(f'[Advanced]\nLogDir = {tmp_path / "log"}\nChunkSize = 5\nResumableThreshold = 5\n')
    root = tk.Tk()
    app = s3_upload.App(root, str(ini))
    yield app
    if app.run is not None and app.run.running:
        app.run.stop.set()
        app.run.thread.join(30)
    try:
        app.close()
    except tk.TclError:
        pass


def pump(app, until, timeout=90):
    """Run the Tk event loop until the condition holds."""
    deadline = time.time() + timeout
    while not until():
        assert time.time() < deadline, f'timed out waiting for the window: {app.status.cget("text")}'
        app.root.update()
        time.sleep(0.02)
    app.root.update()


def fill(app, **values):
    for name, value in values.items():
        app.vars[name].set(str(value))
    app.job_changed()


def test_upload_from_the_form(window, seaweed, tmp_path):
    app = window
    files = {'a.txt': b'hello', 'sub/b.bin': random_bytes(12 * MiB, 50), 'empty': b''}
    src = write_tree(tmp_path / 'src', files)
    bucket = seaweed.bucket()
    fill(app, JobType='LOCAL_TO_S3', SrcDir=src, SrcFileIndex='*', DesProfileName=seaweed.profile,
         DesEndPointURL=seaweed.endpoint, DesBucket=bucket, S3Prefix='from-gui', MaxThread=3, MaxParallelFile=4)
    app.save_var.set(False)
    before = (tmp_path / 'gui.ini').read_text()
    app.start(confirm=False)
    pump(app, lambda: app.finished)
    assert app.run.report is not None and app.run.report.files_transferred == 3, app.run.error
    assert bucket_contents(seaweed, bucket) == {f'from-gui/{k}': v for k, v in files.items()}
    assert float(app.bar['value']) == pytest.approx(100.0)
    status = app.status.cget('text')
    assert '100.0%' in status and 'files 3/3' in status and 'transferred 3' in status and 'failed 0' in status
    assert 'DONE' in app.log.get('1.0', 'end')
    assert app.message.cget('text') == 'Done.'
    assert (tmp_path / 'gui.ini').read_text() == before          # "Save to config.ini" was not ticked


def test_stop_then_resume(window, seaweed, tmp_path):
    app = window
    data = random_bytes(40 * MiB, 51)
    src = write_tree(tmp_path / 'src', {'big.bin': data})
    bucket = seaweed.bucket()
    (tmp_path / 'gui.ini').write_text(f'[Advanced]\nLogDir = {tmp_path / "log"}\nChunkSize = 5\nResumableThreshold = 5\n'
                                      'BandwidthLimit = 8\n')
    app.saved = read_settings(str(tmp_path / 'gui.ini'))[0]
    fill(app, JobType='LOCAL_TO_S3', SrcDir=src, DesProfileName=seaweed.profile, DesEndPointURL=seaweed.endpoint,
         DesBucket=bucket, MaxThread=2)
    app.save_var.set(False)
    app.start(confirm=False)
    pump(app, lambda: len(parts_of(seaweed, bucket, 'big.bin')) >= 2)
    app.stop()
    pump(app, lambda: app.finished)
    assert app.run.report.stopped
    assert str(app.resume_button.cget('state')) == 'normal'
    assert 'Press Resume' in app.message.cget('text')
    assert bucket_contents(seaweed, bucket) == {}
    app.run.config.BandwidthLimit = 0
    app.resume()
    pump(app, lambda: app.finished)
    report = app.run.report
    assert not report.stopped and report.files_transferred == 1 and report.parts_resumed >= 2
    assert bucket_contents(seaweed, bucket) == {'big.bin': data}
    assert float(app.bar['value']) == pytest.approx(100.0)


def test_nothing_starts_on_bad_input(window, tmp_path):
    app = window
    fill(app, JobType='LOCAL_TO_S3', SrcDir=tmp_path / 'missing', DesBucket='')
    app.start(confirm=False)
    app.root.update()
    assert app.run is None
    assert app.errors['SrcDir'].winfo_ismapped() and 'existing local folder' in app.errors['SrcDir'].cget('text')
    assert app.errors['DesBucket'].winfo_ismapped()
    fill(app, SrcDir=tmp_path, DesBucket='b', MaxThread='10000')
    app.start(confirm=False)
    app.root.update()
    assert app.run is None and 'MaxThread' in app.errors['MaxThread'].cget('text')


def test_save_to_config_writes_an_ini_the_cli_runs_unchanged(window, seaweed, tool, tmp_path):
    app = window
    src = write_tree(tmp_path / 'src', {'x.txt': b'x'})
    bucket = seaweed.bucket()
    fill(app, JobType='LOCAL_TO_S3', SrcDir=src, DesProfileName=seaweed.profile, DesEndPointURL=seaweed.endpoint,
         DesBucket=bucket, S3Prefix='saved', StorageClass='STANDARD')
    app.save_var.set(True)
    app.start(confirm=False)
    pump(app, lambda: app.finished)
    ini = tmp_path / 'gui.ini'
    text = ini.read_text()
    assert '[Basic]' in text and f'DesBucket = {bucket}' in text and f'SrcDir = {src}' in text
    seaweed.client().delete_object(Bucket=bucket, Key='saved/x.txt')
    done = subprocess.run([sys.executable, str(TOOL), '--nogui', '--config', str(ini)], capture_output=True,
                          text=True, timeout=120, env=tool.env)
    assert done.returncode == 0, done.stderr
    assert bucket_contents(seaweed, bucket) == {'saved/x.txt': b'x'}


def test_lists_buckets_and_drills_into_prefixes_without_freezing(window, seaweed):
    """Each listing is answered 1.5 s late: the window's call returns at once and its event loop keeps running
    (it redraws, answers clicks) until the answer fills the drop-down."""
    from fault_proxy import FaultProxy
    app = window
    bucket = seaweed.bucket('listed')
    client = seaweed.client()
    for key in ('photos/2024/a.jpg', 'photos/2025/b.jpg', 'docs/c.txt'):
        client.put_object(Bucket=bucket, Key=key, Body=b'.')
    proxy = FaultProxy(seaweed.endpoint)
    proxy.add('delay', 'GET', r'^/(\?|$)|list-type=2', times=-1, seconds=1.5)
    ticks = []

    def tick():
        ticks.append(time.monotonic())
        app.root.after(20, tick)

    def listed_without_freezing(call, ready):
        ticks.clear()
        app.root.after(20, tick)
        started = time.monotonic()
        call()
        assert time.monotonic() - started < 0.5, 'the listing ran on the window\'s thread'
        pump(app, ready)
        waited = time.monotonic() - started
        assert waited > 1.4 and len(ticks) > 20, (waited, len(ticks))   # the loop ran all along
    try:
        fill(app, JobType='LOCAL_TO_S3', DesProfileName=seaweed.profile, DesEndPointURL=proxy.endpoint, DesBucket='')
        listed_without_freezing(lambda: app.list_buckets('Des'),
                                lambda: bucket in app.widgets['DesBucket'][0].cget('values'))
        app.vars['DesBucket'].set(bucket)
        listed_without_freezing(lambda: app.list_prefixes('Des'),
                                lambda: 'photos' in app.widgets['S3Prefix'][0].cget('values'))
        app.vars['S3Prefix'].set('photos')
        listed_without_freezing(lambda: app.list_prefixes('Des'),
                                lambda: 'photos/2025' in app.widgets['S3Prefix'][0].cget('values'))
    finally:
        proxy.stop()


def test_job_type_switches_the_active_fields(window):
    app = window
    fill(app, JobType='S3_TO_S3')
    assert str(app.widgets['SrcBucket'][0].cget('state')) == 'normal'
    assert str(app.widgets['SrcDir'][0].cget('state')) == 'disabled'
    fill(app, JobType='ALIOSS_TO_S3')
    assert str(app.widgets['ali_SrcBucket'][0].cget('state')) == 'normal'
    assert str(app.widgets['SrcBucket'][0].cget('state')) == 'disabled'
    fill(app, JobType='LOCAL_TO_S3')
    assert str(app.widgets['SrcDir'][0].cget('state')) == 'normal'


def test_closing_mid_transfer_asks_first(window, seaweed, tmp_path, monkeypatch):
    app = window
    src = write_tree(tmp_path / 'src', {'slow.bin': random_bytes(30 * MiB, 52)})
    bucket = seaweed.bucket()
    (tmp_path / 'gui.ini').write_text(f'[Advanced]\nLogDir = {tmp_path / "log"}\nChunkSize = 5\nResumableThreshold = 5\n'
                                      'BandwidthLimit = 4\n')
    app.saved = read_settings(str(tmp_path / 'gui.ini'))[0]
    fill(app, JobType='LOCAL_TO_S3', SrcDir=src, DesProfileName=seaweed.profile, DesEndPointURL=seaweed.endpoint,
         DesBucket=bucket)
    app.save_var.set(False)
    app.start(confirm=False)
    pump(app, lambda: wait_for_parts(seaweed, bucket, 'slow.bin', 1, timeout=0.1))
    asked = []
    from tkinter import messagebox
    monkeypatch.setattr(messagebox, 'askyesno', lambda *a, **k: asked.append(a) or False)
    app.close()
    assert asked and app.root.winfo_exists() and app.run.running       # said no: still running


def test_gui_without_tkinter_is_one_clear_line(tmp_path, tool):
    shim = tmp_path / 'shim' / 'tkinter'
    shim.mkdir(parents=True)
    (shim / '__init__.py').write_text('raise ImportError("no tk")\n')
    done = subprocess.run([sys.executable, str(TOOL), '--gui', '--config', str(tmp_path / 'x.ini')],
                          capture_output=True, text=True, timeout=60,
                          env={**tool.env, 'PYTHONPATH': str(tmp_path / 'shim')})
    assert done.returncode == 2 and 'tkinter' in done.stderr and 'Traceback' not in done.stderr

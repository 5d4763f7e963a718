#!/usr/bin/env python3
"""Screenshots of the GUI for README.md, taken on a virtual screen (Xvfb) during a real transfer to moto.

    python3 img/make_screenshots.py        # needs: apt-get install xvfb; pip install pillow "moto[server]"

Writes img/gui-form.png (the form), img/gui-transfer.png (a transfer in progress) and
img/gui-1024x640.png (the window at 1024 x 640, to check it stays usable).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    from PIL import ImageGrab
    from moto.server import ThreadedMotoServer
    display = f':{os.getpid() % 100 + 40}'
    xvfb = subprocess.Popen(['Xvfb', display, '-screen', '0', '1280x800x24', '-nolisten', 'tcp'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    os.environ.update(DISPLAY=display, AWS_ACCESS_KEY_ID='SCREENSHOTKEY0000000',
                      AWS_SECRET_ACCESS_KEY='screenshot/secret/0000000000000', AWS_EC2_METADATA_DISABLED='true',
                      AWS_CONFIG_FILE='/dev/null', AWS_SHARED_CREDENTIALS_FILE='/dev/null')
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    import tkinter as tk

    import s3_upload
    try:
        work = Path(tempfile.mkdtemp(prefix='s3_upload_shots_'))
        source = work / 'Projects'
        for name, size in (('video/interview-4k.mov', 96), ('video/b-roll.mp4', 64), ('photos/2024/beach.raw', 24),
                           ('photos/2024/city.raw', 24), ('docs/report.pdf', 2), ('docs/notes.txt', 0)):
            path = source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(size * 1024 * 1024) if size else b'notes')
        endpoint = f'http://127.0.0.1:{port}'
        s3_upload.make_client('', endpoint, 'us-east-1', 2).create_bucket(Bucket='media-archive')
        ini = work / 's3_upload_config.ini'
        ini.write_text(f'[Advanced]\nLogDir = {work / "log"}\nBandwidthLimit = 40\nChunkSize = 8\n')
        root = tk.Tk()
        app = s3_upload.App(root, str(ini))
        for name, value in dict(JobType='LOCAL_TO_S3', SrcDir=str(source), SrcFileIndex='*', DesProfileName='',
                                DesEndPointURL=endpoint, DesBucket='media-archive', S3Prefix='projects',
                                MaxThread='8', MaxParallelFile='64', StorageClass='STANDARD_IA').items():
            app.vars[name].set(value)
        app.job_changed()
        app.save_var.set(False)

        def settle(seconds: float) -> None:
            deadline = time.time() + seconds
            while time.time() < deadline:
                root.update()
                time.sleep(0.02)

        def shot(name: str) -> None:
            settle(0.3)
            x, y = root.winfo_rootx(), root.winfo_rooty()
            box = (x, y, x + root.winfo_width(), y + root.winfo_height())
            ImageGrab.grab(bbox=box, xdisplay=display).save(HERE / name)
            print('wrote', HERE / name)

        settle(1)
        shot('gui-form.png')
        app.start(confirm=False)
        while app.run is None or app.run.progress.bytes_done < 0.45 * max(app.run.progress.bytes_total, 1):
            settle(0.1)
        shot('gui-transfer.png')
        root.geometry('1024x640')
        shot('gui-1024x640.png')
        while not app.finished:
            settle(0.2)
        shot('gui-done.png')
        app.close()
    finally:
        server.stop()
        xvfb.terminate()
    return 0


if __name__ == '__main__':
    sys.exit(main())

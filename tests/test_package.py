"""The PyInstaller spec of win64/ builds a working one-file program (here the Linux build of the same spec)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, SMALL_PARTS, bucket_contents, write_tree


def test_one_file_build_runs_help_and_a_transfer(moto, tool, tmp_path):
    dist, work = tmp_path / 'dist', tmp_path / 'build'
    built = subprocess.run([sys.executable, '-m', 'PyInstaller', '--noconfirm', '--distpath', str(dist),
                            '--workpath', str(work), str(ROOT / 'win64' / 's3_upload.spec')],
                           capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    program = dist / 's3_upload'
    shown = subprocess.run([str(program), '--help'], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and '--nogui' in shown.stdout and 'ChunkSize' in shown.stdout
    src = write_tree(tmp_path / 'src', {'hello.txt': b'from the one-file build', 'big.bin': b'b' * (6 * 1024 * 1024)})
    bucket = moto.bucket()
    ini = tool.ini({'JobType': 'LOCAL_TO_S3', 'DesProfileName': moto.profile, 'DesEndPointURL': moto.endpoint,
                    'DesBucket': bucket, 'SrcDir': src, **SMALL_PARTS, 'LogDir': tmp_path / 'log'})
    ran = subprocess.run([str(program), '--nogui', '--config', str(ini)], capture_output=True, text=True,
                         timeout=300, env=tool.env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert bucket_contents(moto, bucket) == {'hello.txt': b'from the one-file build', 'big.bin': b'b' * (6 * 1024 * 1024)}


def test_pip_builds_a_wheel_with_both_files_and_their_commands(tmp_path):
    import zipfile
    built = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-w',
                            str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob('s3_upload-*.whl')
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    assert {'s3_upload.py', 's3_upload_cluster.py'} <= set(names)
    assert 's3-upload = s3_upload:main' in entry_points and 's3-upload-cluster = s3_upload_cluster:main' in entry_points

#!/usr/bin/env bash
# Build the one-file executable from win64/s3_upload.spec (Linux/macOS; on Windows use build.bat).
# Output: dist/s3_upload (+ s3_upload_config.ini beside it, where the program looks for it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -r requirements.txt pyinstaller
python3 -m PyInstaller --noconfirm --clean --distpath "${DIST:-dist}" --workpath "${WORK:-build}" win64/s3_upload.spec
cp s3_upload_config.ini "${DIST:-dist}/"
"${DIST:-dist}/s3_upload" --version

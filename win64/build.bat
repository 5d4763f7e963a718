@echo off
rem Build dist\s3_upload.exe (one file, GUI by default) from win64\s3_upload.spec.
cd /d "%~dp0\.."
python -m pip install --quiet -r requirements.txt oss2 pyinstaller || exit /b 1
python -m PyInstaller --noconfirm --clean --distpath dist --workpath build win64\s3_upload.spec || exit /b 1
copy /y s3_upload_config.ini dist\ >nul
dist\s3_upload.exe --version

"""Config parsing: the ini format of the original tool, defaults, overrides and clear errors."""

from __future__ import annotations

import pytest

import s3_upload
from s3_upload import Config, ConfigError

MiB = 1024 * 1024


def write(tmp_path, text, name='c.ini', encoding='utf-8'):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def test_minimal_ini_gets_every_advanced_default_from_the_shipped_ini(tmp_path):
    config = Config.load(write(tmp_path, '[Basic]\nDesBucket = b\n[LOCAL_TO_S3]\nSrcDir = /x\n'))
    shipped = Config.load(s3_upload.default_config_path())
    for option in s3_upload.OPTIONS:
        if option.section == 'Advanced':
            assert getattr(config, option.name) == getattr(shipped, option.name), option.name
    assert config.JobType == 'LOCAL_TO_S3' and config.DesEndPointURL is None
    assert config.ResumableThreshold == 64      # one PutObject up to 64 MiB and half of MemoryLimit...
    for advanced, threshold in (('ChunkSize = 100', 100),                   # ...or ChunkSize if larger
                                ('MemoryLimit = 64', 32), ('MemoryLimit = 16', 8)):
        assert Config.load(write(tmp_path, '[Basic]\nDesBucket = b\n[LOCAL_TO_S3]\nSrcDir = /x\n'
                                           f'[Advanced]\n{advanced}\n')).ResumableThreshold == threshold, advanced
    assert Config.load(s3_upload.default_config_path(), {'MemoryLimit': '64'}).ResumableThreshold == 32


def test_keys_are_case_insensitive_and_original_ini_loads(tmp_path):
    text = ('[Basic]\nJOBTYPE = s3_to_s3\ndesprofilename = p\nDesEndPointURL = https://storage.googleapis.com\n'
            'DesBucket = dst\nS3Prefix = /data/\nSrcFileIndex = *\n[LOCAL_TO_S3]\nSrcDir = /home/x\n'
            '[S3_TO_S3]\nSrcProfileName = iad\nSrcEndPointURL = AWS\nSrcBucket = src\n'
            '[Advanced]\nChunkSize = 5\nMaxRetry = 20\nMaxThread = 5\nMaxParallelFile = 5\n'
            'StorageClass = standard_ia\nifVerifyMD5 = False\nDontAskMeToClean = True\nLoggingLevel = INFO\n')
    config = Config.load(write(tmp_path, text))
    assert config.JobType == 'S3_TO_S3'
    assert config.DesEndPointURL == 'https://storage.googleapis.com'
    assert config.S3Prefix == 'data' and config.SrcPrefix == 'data'   # SrcPrefix defaults to S3Prefix
    assert config.StorageClass == 'STANDARD_IA'
    assert config.chunk_bytes == 5 * MiB and config.threshold_bytes == 64 * MiB


def test_src_prefix_and_overrides(tmp_path):
    path = write(tmp_path, '[Basic]\nJobType = S3_TO_S3\nDesBucket = d\nS3Prefix = out\n'
                           '[S3_TO_S3]\nSrcBucket = s\nSrcPrefix = in\n')
    config = Config.load(path, {'maxthread': '12', 'S3Prefix': 'other/'})
    assert (config.SrcPrefix, config.S3Prefix, config.MaxThread) == ('in', 'other', 12)


def test_a_comment_is_cut_only_where_the_value_cannot_hold_it(tmp_path):
    path = write(tmp_path, '\ufeff[Basic]\nDesBucket = b   # the bucket\nS3Prefix = backup ;2024\n'
                           '[LOCAL_TO_S3]\nSrcDir = /data/proj #2\n[Advanced]\nMaxThread = 9 ; nine\n'
                           'StorageClass = STANDARD_IA # cheaper\n')
    config = Config.load(path)
    assert (config.DesBucket, config.MaxThread, config.StorageClass) == ('b', 9, 'STANDARD_IA')
    assert (config.SrcDir, config.S3Prefix) == ('/data/proj #2', 'backup ;2024')     # paths are never cut
    joined = '\n'.join(config.warnings)                                               # but never silently
    assert "SrcDir = '/data/proj #2' is taken whole" in joined and "S3Prefix = 'backup ;2024'" in joined
    assert 'DesBucket' not in joined and 'MaxThread' not in joined


def test_the_shipped_ini_says_how_to_write_a_value_with_a_hash(tmp_path):
    with open(s3_upload.default_config_path(), encoding='utf-8') as handle:
        header = handle.read().split('[Basic]')[0]
    assert 'Comments go on lines of their own' in header and '#2' in header


@pytest.mark.parametrize('line, message', [
    ('ChunkSize = 0', 'ChunkSize'),
    ('ChunkSize = 4', 'from 5 to 5120'),
    ('ChunkSize = 5121', 'from 5 to 5120'),
    ('ChunkSize = ten', 'whole number'),
    ('MaxThread = -1', 'MaxThread'),
    ('MaxThread = 10000', 'from 1 to 256'),
    ('MaxParallelFile = 0', 'MaxParallelFile'),
    ('MaxRetry = x', 'MaxRetry'),
    ('StorageClass = COLD', 'one of STANDARD'),
    ('ifVerifyMD5 = maybe', 'True or False'),
    ('LoggingLevel = LOUD', 'DEBUG'),
    ('BandwidthLimit = -5', 'BandwidthLimit'),
])
def test_bad_numbers_and_choices_are_rejected(tmp_path, line, message):
    path = write(tmp_path, f'[Basic]\nDesBucket = b\n[LOCAL_TO_S3]\nSrcDir = /x\n[Advanced]\n{line}\n')
    with pytest.raises(ConfigError, match=message):
        Config.load(path)


@pytest.mark.parametrize('text, message', [
    ('[Basic]\nJobType = FTP_TO_S3\nDesBucket = b\n', 'JobType'),
    ('[Basic]\nDesBucket =\n[LOCAL_TO_S3]\nSrcDir = /x\n', 'DesBucket is missing'),
    ('[Basic]\nDesBucket = b\n', 'SrcDir is missing'),
    ('[Basic]\nJobType = S3_TO_S3\nDesBucket = b\n', 'SrcBucket is missing'),
    ('[Basic]\nDesBucket = b/c\n[LOCAL_TO_S3]\nSrcDir = /x\n', 'bucket name'),
    ('[Basic]\nDesBucket = my bucket\n[LOCAL_TO_S3]\nSrcDir = /x\n', 'one word'),
    ('DesBucket = b\n', 'cannot be parsed'),
    ('[Basic]\nDesBucket = b\nDesBucket = c\n', 'cannot be parsed'),
    ('[Basic]\nDesEndPointURL = ftp://x\nDesBucket = b\n[LOCAL_TO_S3]\nSrcDir = /x\n', 'http'),
])
def test_bad_config_lines(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        Config.load(write(tmp_path, text))


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match='config file not found'):
        Config.load(str(tmp_path / 'nope.ini'))
    path = write(tmp_path, '[Basic]\nDesBucket = caf\xe9\n', encoding='latin-1')
    with pytest.raises(ConfigError, match='not UTF-8'):
        Config.load(path)


def test_unknown_keys_and_sections_warn_with_did_you_mean(tmp_path):
    path = write(tmp_path, '[Basic]\nDesBucket = b\nDesBuckett = c\n[LOCAL_TO_S3]\nSrcDir = /x\n'
                           '[Advanced]\nMaxThreads = 4\n[Advanced2]\nx = 1\n')
    config = Config.load(path)
    joined = '\n'.join(config.warnings)
    assert 'unknown key DesBuckett in [Basic] ignored (did you mean DesBucket?)' in joined
    assert 'did you mean MaxThread?' in joined
    assert '[Advanced2]' in joined and 'did you mean [Advanced]?' in joined
    with pytest.raises(ConfigError, match='did you mean MaxThread'):
        Config.load(path, {'MaxThreads': '3'})


def test_a_misspelt_required_key_is_named_in_the_error(tmp_path):
    path = write(tmp_path, '[Basic]\nDesBuckett = b\n[LOCAL_TO_S3]\nSrcDir = /x\n')
    with pytest.raises(ConfigError, match=r'unknown key DesBuckett in \[Basic\] \(did you mean DesBucket\?\)'):
        Config.load(path)


def test_a_misspelt_section_is_ignored_with_its_keys_as_the_warning_says(tmp_path):
    path = write(tmp_path, '[Basic]\nDesBucket = b\n[LOCAL_TO_S3]\nSrcDir = /x\n[Advancd]\nMaxThread = 3\n')
    config = Config.load(path)
    assert config.MaxThread == 8                              # not used...
    assert 'unknown section [Advancd] ignored (did you mean [Advanced]?), and with it MaxThread' in config.warnings[0]
    path = write(tmp_path, '[Basic]\nDesBucket = b\n[LOCAL_TO_S33]\nSrcDir = /x\n')
    with pytest.raises(ConfigError, match=r'SrcDir is in section \[LOCAL_TO_S33\], .*did you mean \[LOCAL_TO_S3\]'):
        Config.load(path)                                     # ...and named when it was the one needed


def test_endpoint_forms():
    parse = s3_upload._endpoint
    assert parse('AWS') is None and parse('') is None and parse('aws') is None
    assert parse('s3.cn-north-1.amazonaws.com.cn') == 'https://s3.cn-north-1.amazonaws.com.cn'
    assert parse('http://127.0.0.1:9000/') == 'http://127.0.0.1:9000'


def test_prefix_forms():
    assert s3_upload._prefix('/a/b/') == 'a/b' and s3_upload._prefix('/') == '' and s3_upload._prefix('.') == ''


def documented_rows(path):
    """key -> (default, meaning) of the settings table rows (| `Key` | default | meaning |) of a Markdown file."""
    import re
    rows = {}
    for line in path.read_text(encoding='utf-8').splitlines():
        match = re.match(r'\| `(\w+)` \| (.*?) \| (.*) \|$', line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3).replace('\\|', '|'))
    return rows


def test_each_setting_is_described_once_and_every_document_says_the_same():
    """The option table (which --help prints) is the one description: the README's settings table (the fleet's
    keys in deploy/README.md) and the shipped ini's comment above each key repeat it word for word."""
    import re
    from pathlib import Path
    root = Path(s3_upload.__file__).parent
    expected = {o.name: ('' if o.default is None else o.default, o.help) for o in s3_upload.OPTIONS}
    readme, fleet = documented_rows(root / 'README.md'), documented_rows(root / 'deploy' / 'README.md')
    assert readme == {k: v for k, v in expected.items() if s3_upload.OPTIONS_BY_KEY[k.lower()].section != 'Cluster'}
    assert fleet == {k: v for k, v in expected.items() if s3_upload.OPTIONS_BY_KEY[k.lower()].section == 'Cluster'}
    lines = (root / 's3_upload_config.ini').read_text(encoding='utf-8').splitlines()
    for option in s3_upload.OPTIONS:
        (at,) = [n for n, line in enumerate(lines) if line.split('=')[0].strip(' #') == option.name]
        comment = []
        for line in reversed(lines[:at]):
            if not line.startswith('# ') or re.match(r'# \w+ =', line):
                break
            comment.insert(0, line[2:])
        assert ' '.join(comment) == option.help, option.name

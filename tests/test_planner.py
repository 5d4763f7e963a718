"""The planner: part sizes within S3's limits, part-fit checks for resume, and the streamed skip decision."""

from __future__ import annotations

import threading

import pytest

from conftest import write_tree
from s3_upload import (Destination, LocalSource, MiB, Part, ResumeJournal, Retrier, part_count, part_range,
                       part_size_for, parts_fit, plan)

GiB, TiB = 1024 * MiB, 1024 * 1024 * MiB


@pytest.mark.parametrize('size, chunk, expected', [
    (100 * MiB, 8 * MiB, 8 * MiB),
    (10_000 * 8 * MiB, 8 * MiB, 8 * MiB),             # exactly 10,000 parts: unchanged
    (10_000 * 8 * MiB + 1, 8 * MiB, 9 * MiB),         # one byte more: next whole MiB
    (5 * TiB, 5 * MiB, 525 * MiB),                     # the largest object S3 takes
    (200 * GiB, 5 * MiB, 21 * MiB),
])
def test_part_size_keeps_within_10000_parts_in_whole_mib(size, chunk, expected):
    part = part_size_for(size, chunk)
    assert part == expected
    assert part % MiB == 0 and part_count(size, part) <= 10_000 and part <= 5 * GiB


def test_part_size_rejects_objects_over_5_tib():
    with pytest.raises(ValueError, match='5 TiB'):
        part_size_for(5 * TiB + 1, 8 * MiB)


def test_part_ranges_cover_the_file_exactly():
    size, part = 23 * MiB + 5, 5 * MiB
    ranges = [part_range(n, size, part) for n in range(1, part_count(size, part) + 1)]
    assert ranges[0] == (0, part) and ranges[-1] == (20 * MiB, 3 * MiB + 5)
    assert sum(length for _, length in ranges) == size


def test_parts_fit():
    size = 23 * MiB + 5
    good = [Part(1, 5 * MiB, 'e'), Part(5, 3 * MiB + 5, 'e')]
    assert parts_fit(good, size, 5 * MiB)
    assert not parts_fit(good, size, 6 * MiB)                      # other part size
    assert not parts_fit([Part(6, 1, 'e')], size, 5 * MiB)         # beyond the last part
    assert not parts_fit([Part(1, 4 * MiB, 'e')], size, 4 * MiB)   # below S3's 5 MiB minimum
    assert parts_fit([Part(1, size, 'e')], size, size)              # a single part may be any size


def test_streamed_plan_skips_exactly_what_is_there(seaweed, tmp_path):
    """Both listings stream in pages of 3; decisions match a full comparison."""
    names = [f'k{i:02d}' for i in range(30)] + ['z/a', 'z-b', 'é']
    write_tree(tmp_path, {name: b'x' * (i % 4) for i, name in enumerate(names)})
    bucket = seaweed.bucket()
    client = seaweed.client()
    present = {}
    for i, name in enumerate(names):
        if i % 3 == 0:
            present[name] = b'x' * (i % 4)              # same size: skip
        elif i % 5 == 0:
            present[name] = b'y' * (i % 4 + 1)          # other size: send
    for name, data in present.items():
        client.put_object(Bucket=bucket, Key=f'p/{name}', Body=data)
    client.put_object(Bucket=bucket, Key='p/extra-only-at-destination', Body=b'')
    destination = Destination(client, bucket, 'p', page_size=3, retry=Retrier(2, threading.Event()))
    tasks = {task.source.key: task.action for task in plan(LocalSource(str(tmp_path)).objects(), destination)}
    expected = {name: 'skip' if name in present and len(present[name]) == i % 4 else 'send'
                for i, name in enumerate(names)}
    assert tasks == expected


class FakeListing:
    """A destination whose listing order we choose (real servers always sort; this tests the guard)."""
    prefix = ''
    pending_check = None        # listed before the first writes

    def __init__(self, items):
        self.items = items

    def key_for(self, key):
        return key

    def objects(self):
        return iter(self.items)


def test_unsorted_source_falls_back_to_a_full_index(tmp_path):
    write_tree(tmp_path, {'a': b'1', 'b': b'22', 'c': b'333'})
    by_key = {o.key: o for o in LocalSource(str(tmp_path)).objects()}
    unsorted = [by_key['b'], by_key['a'], by_key['c']]
    destination = FakeListing([('a', 1, ''), ('b', 2, ''), ('c', 3, '')])
    assert {t.source.key: t.action for t in plan(unsorted, destination)} == {'a': 'skip', 'b': 'skip', 'c': 'skip'}


@pytest.mark.parametrize('order', [['b', 'a', 'c'], ['c', 'b', 'a'], ['a', 'c', 'b']])
def test_unsorted_destination_never_causes_a_false_skip(tmp_path, order):
    write_tree(tmp_path, {'a': b'1', 'b': b'22', 'c': b'333', 'd': b'4444'})
    sizes = {'a': 1, 'b': 0, 'c': 3}
    destination = FakeListing([(key, sizes[key], '') for key in order])
    tasks = {t.source.key: t.action for t in plan(LocalSource(str(tmp_path)).objects(), destination)}
    assert tasks['b'] == 'send' and tasks['d'] == 'send'
    skipped = {key for key, action in tasks.items() if action == 'skip'}
    assert skipped <= {'a', 'c'}      # only objects present with the same size may be skipped


def test_filters_ignore_list_and_last_matching_rule_wins():
    from s3_upload import Filters
    filters = Filters(['bucket/exact_key.mp4', 'bucket/your_*', '*.jpg', '*/readme.md'],
                      [('exclude', '*'), ('include', '*.txt'), ('exclude', 'tmp/*')])
    assert filters.excluded('a/b.txt', 'bucket/a/b.txt') == ''
    assert filters.excluded('tmp/b.txt', 'bucket/tmp/b.txt') == '--exclude tmp/*'
    assert filters.excluded('x.bin', 'bucket/x.bin') == '--exclude *'
    assert filters.excluded('deep/dir/p.jpg', 'bucket/deep/dir/p.jpg').startswith('ignore list')   # * matches /
    assert filters.excluded('your_file.txt', 'bucket/your_file.txt') == 'ignore list: bucket/your_*'
    assert filters.excluded('exact_key.mp4', 'bucket/exact_key.mp4').startswith('ignore list')
    assert filters.excluded('docs/readme.md', 'bucket/docs/readme.md') == 'ignore list: */readme.md'
    assert Filters([], [('include', '*.txt')]).excluded('x.bin', 'b/x.bin') == ''   # include alone keeps all


def test_ignore_list_file_comments_and_errors(tmp_path):
    from s3_upload import Config, ConfigError, Filters
    path = tmp_path / 'ignore.txt'
    path.write_text('# comment\n\n*.tmp\n  */cache/*  \n', encoding='utf-8')
    config = Config.from_settings({'DesBucket': 'b', 'SrcDir': '/x', 'IgnoreListFile': str(path)})
    assert Filters.from_config(config).ignore == ['*.tmp', '*/cache/*']
    missing = Config.from_settings({'DesBucket': 'b', 'SrcDir': '/x', 'IgnoreListFile': str(tmp_path / 'no')})
    with pytest.raises(ConfigError, match='IgnoreListFile'):
        Filters.from_config(missing)


def test_resume_journal_keeps_acknowledged_parts_across_restarts_and_compactions(tmp_path):
    path = str(tmp_path / 'journal.jsonl')
    journal = ResumeJournal(path)
    journal.record('b', 'k', 'up-1', 'size+mtime', 8 * MiB)
    journal.part_done('up-1', 1, '"aaa"')
    journal.part_done('up-1', 2, 'bbb', 'Y3JjNjQ=')        # with the additional checksum acknowledged
    journal.record('b', 'other', 'up-2', 'id', 8 * MiB)
    journal.forget('up-2')
    journal.part_done('up-2', 1, 'ccc')                 # a late part of a finished upload: not recorded
    for _ in range(2):                                   # a restart compacts the file; the next one reads that
        journal = ResumeJournal(path)
        entry = journal.get('b', 'k', 'up-1')
        assert entry is not None and entry['parts'] == {1: 'aaa', 2: 'bbb'} and entry['part_size'] == 8 * MiB
        assert entry['checksums'] == {2: 'Y3JjNjQ='}
        assert journal.get('b', 'other', 'up-2') is None
        assert journal.get('b', 'wrong-key', 'up-1') is None
    with open(path, 'a', encoding='utf-8') as handle:    # an entry of version 2.0: no part list
        handle.write('{"op": "open", "bucket": "b", "key": "old", "upload_id": "up-3", "identity": "i", '
                     '"part_size": 5}\n{"op": "part", "upload_id": "up-3", "number": 1, "etag": "x"}\n{"op": "op')
    entry = ResumeJournal(path).get('b', 'old', 'up-3')
    assert entry is not None and 'parts' not in entry    # every listed part that fits is kept, as in 2.0


def test_no_more_than_four_mib_of_small_files_go_before_the_destination_answers():
    """What a rerun sends for nothing when the files are there already stays small."""
    from s3_upload import Unanswered
    unanswered = Unanswered()
    assert [unanswered.take(256 * 1024) for _ in range(17)] == [True] * 16 + [False]
    assert unanswered.take(0)
    assert not Unanswered().take(256 * 1024 + 1)

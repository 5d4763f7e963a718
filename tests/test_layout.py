"""The code reads top to bottom: s3_upload.py in banner sections, each using only what sections above it
define; the fleet in s3_upload_cluster.py, which s3_upload.py never needs."""

from __future__ import annotations

import ast
import re

from conftest import CLUSTER, TOOL


def sections_and_names(path):
    """(section titles in order, top-level name -> its section) of a file."""
    text = path.read_text(encoding='utf-8')
    banners = [(number, match.group(1)) for number, line in enumerate(text.splitlines(), 1)
               for match in [re.match(r'# (\w[\w ]*?) #{5,}$', line)] if match]

    def section_of(line: int) -> str:
        return next((title for start, title in reversed(banners) if start <= line), '')
    tree = ast.parse(text)
    defined = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined[node.name] = (section_of(node.lineno), node)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    defined[target.id] = (section_of(node.lineno), node)
    return [''] + [title for _, title in banners], defined


def test_no_section_uses_a_name_a_later_section_defines():
    order, defined = sections_and_names(TOOL)
    assert order[1:4] == ['Errors and helpers', 'Config', 'Logging'] and order[-1] == 'Main', order
    later = []
    for name, (section, node) in defined.items():
        for used in ast.walk(node):
            if isinstance(used, ast.Name) and used.id in defined:
                theirs = defined[used.id][0]
                if order.index(theirs) > order.index(section):
                    later.append(f'{name} ({section}) uses {used.id} ({theirs})')
    assert sorted(set(later)) == []


def test_the_engine_file_knows_nothing_of_the_fleet():
    text = TOOL.read_text(encoding='utf-8')
    for word in ('sqs', 'dynamodb', 'lambda_handler', 'Worker', 'StatusTable('):
        assert word not in text.replace('s3_upload_cluster', ''), word
    assert 'import s3_upload_cluster' in text                 # only to point old `s3_upload.py worker` there
    assert 'from s3_upload import' in CLUSTER.read_text(encoding='utf-8')

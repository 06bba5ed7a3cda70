"""engine/rules/load.py: files found, YAML parsed with marks, YAML errors located."""

from __future__ import annotations

import pytest

from engine.rules.errors import RuleError
from engine.rules.load import Document, find_rule_files, load_file


def write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_directories_are_searched_recursively_for_yaml_and_yml(tmp_path):
    a = write(tmp_path / "b" / "z.yml", "rules: []\n")
    b = write(tmp_path / "a.yaml", "rules: []\n")
    write(tmp_path / "notes.txt", "not a rule file\n")
    files, errors = find_rule_files([str(tmp_path)])
    assert errors == []
    assert files == sorted([a, b])


def test_a_file_named_twice_is_loaded_once_and_a_missing_path_is_an_error(tmp_path):
    a = write(tmp_path / "a.yaml", "rules: []\n")
    files, errors = find_rule_files([a, a, str(tmp_path / "nope")])
    assert files == [a]
    assert [str(e) for e in errors] == [f"{tmp_path / 'nope'}:1:1: no such file or directory"]


def test_marks_give_the_line_and_column_of_each_key_and_item(tmp_path):
    doc = load_file(write(tmp_path / "r.yaml", "rules:\n  - name: x\n    match:\n      field: a\n"))
    assert isinstance(doc, Document)
    assert doc.locate(("rules",)) == (1, 1)
    assert doc.locate(("rules", 0)) == (2, 5)
    assert doc.locate(("rules", 0, "match", "field")) == (4, 7)
    # an unknown deeper path falls back to its nearest located ancestor
    assert doc.locate(("rules", 0, "match", "field", "nope", 3)) == (4, 7)
    assert doc.rule_name(("rules", 0, "match")) == "x"


def test_dates_stay_strings_and_merge_keys_work(tmp_path):
    doc = load_file(write(tmp_path / "r.yaml", "base: &b {x: 1}\nuse:\n  <<: *b\n  when: 2026-12-24\n"))
    assert doc.data["use"] == {"x": 1, "when": "2026-12-24"}


def test_empty_file_is_an_empty_mapping(tmp_path):
    doc = load_file(write(tmp_path / "r.yaml", "# nothing yet\n"))
    assert doc.data == {}


def test_invalid_yaml_is_located(tmp_path):
    path = write(tmp_path / "r.yaml", "rules:\n  - name: [unclosed\n")
    err = load_file(path)
    assert isinstance(err, RuleError)
    assert err.file == path and err.line == 3
    assert "invalid YAML" in err.message


def test_duplicate_keys_are_an_error_at_the_second_key(tmp_path):
    path = write(tmp_path / "r.yaml", "rules:\n  - name: a\n    name: b\n")
    err = load_file(path)
    assert isinstance(err, RuleError)
    assert (err.line, err.col, err.message) == (3, 5, "duplicate key 'name'")


def test_unreadable_and_non_utf8_files(tmp_path):
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"rules: \xff\n")
    err = load_file(str(bad))
    assert isinstance(err, RuleError) and "not valid UTF-8" in err.message
    err = load_file(str(tmp_path))  # a directory where a file was expected
    assert isinstance(err, RuleError) and err.message.startswith("cannot read file")


@pytest.mark.parametrize(("text", "where", "hint"), [
    pytest.param("rules:\n  - name: a\n\tservices: [sre]\n", (3, 1),
                 "(YAML does not allow tabs for indentation: indent with spaces)", id="tab-in-a-mapping"),
    pytest.param("rules:\n\t- name: a\n", (2, 1),
                 "(YAML does not allow tabs for indentation: indent with spaces)", id="tab-before-an-item"),
    pytest.param("rules:\n  - name: a\n    services: [sre]\n     match: {field: x}\n", (4, 6),
                 "(bad indentation: this line starts in column 6, but the keys of the mapping begun on line 2 "
                 "start in column 5)", id="key-indented-too-far"),
    pytest.param("rules:\n  - name: a\n - name: b\n", (3, 2),
                 "(bad indentation: this line starts in column 2, but the keys of the mapping begun on line 1 "
                 "start in column 1)", id="item-indented-too-little"),
    pytest.param("rules:\n  - name: a\n    services: [sre]\n   match: {field: x}\n", (4, 4),
                 "(bad indentation: this line starts in column 4, but the items of the list begun on line 2 "
                 "start with '-' in column 3)", id="key-between-items"),
    pytest.param("a:\n  b: 1\n  - c\n", (3, 3),
                 "(a list item '-' cannot stand among the keys of the mapping begun on line 2)", id="item-among-keys"),
    pytest.param("rules:\n  - name: a\n    summary: disk: full\n", (3, 18),
                 "(a value that contains ': ' must be quoted, e.g. summary: \"disk: full\"; or this line is "
                 "indented too far)", id="unquoted-colon"),
])
def test_yaml_mistakes_get_a_hint_in_plain_words(tmp_path, text, where, hint):
    err = load_file(write(tmp_path / "r.yaml", text))
    assert isinstance(err, RuleError)
    assert (err.line, err.col) == where
    assert err.message.startswith("invalid YAML: ") and err.message.endswith(hint), err.message

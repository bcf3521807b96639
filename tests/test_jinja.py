"""The shared Jinja2 environment: Ansible's common filters and tests give Ansible's results.

The expected values are ansible-core 2.18's (lib/ansible/plugins/filter/core.py, test/core.py, test/mathstuff.py,
called with the same arguments); where tritonfleet differs on purpose, the test says so.
"""

from __future__ import annotations

import pytest
import yaml

from tritonfleet.engine.jinja import RenderError, checked_tree, evaluate, render_text, variables_needed
from tritonfleet.yamlfile import load_yaml

SERVER = {"name": "gpu01", "port": 8000, "tags": ["a", "b"], "conf": {"b": 1, "a": [1, "x y"]}}


@pytest.mark.parametrize("expression, expected", [
    ("conf | to_json", '{"b": 1, "a": [1, "x y"]}'),
    ("conf | to_nice_json", '{\n    "a": [\n        1,\n        "x y"\n    ],\n    "b": 1\n}'),
    ("conf | to_nice_json(indent=2)", '{\n  "a": [\n    1,\n    "x y"\n  ],\n  "b": 1\n}'),
    ("conf | to_yaml", "a: [1, x y]\nb: 1\n"),
    ("conf | to_nice_yaml", "a:\n- 1\n- x y\nb: 1\n"),
    ("'{\"a\": [1, 2.5, null]}' | from_json", {"a": [1, 2.5, None]}),
    ("'a: [1, yes, ~]' | from_yaml", {"a": [1, True, None]}),
    ("'yes' | bool", True), ("'On' | bool", True), ("'TRUE' | bool", True), ("'1' | bool", True), ("1 | bool", True),
    ("'no' | bool", False), ("'off' | bool", False), ("'False' | bool", False), ("'0' | bool", False),
    ("0 | bool", False), ("none | bool", None),
    ("(port > 10) | ternary('big', 'small')", "big"), ("none | ternary('a', 'b', 'unset')", "unset"),
    ("'foo-bar-baz' | regex_replace('-(\\\\w+)', '_\\\\1')", "foo_bar_baz"),
    ("'Foo foo' | regex_replace('foo', 'x', ignorecase=true)", "x x"),
    ("port | regex_replace('0', '1')", "8111"),
    ("'server1 port 8000' | regex_search('port (\\\\d+)')", "port 8000"),
    ("'server1 port 8000' | regex_search('port (\\\\d+)', '\\\\1')", ["8000"]),
    ("'server1 port 8000' | regex_search('(?P<p>\\\\d+)$', '\\\\g<p>')", ["8000"]),
    ("'nothing' | regex_search('port')", None),
    ("'a1b22c333' | regex_findall('\\\\d+')", ["1", "22", "333"]),
    ("'a.b*c' | regex_escape", "a\\.b\\*c"),
    ("name | mandatory", "gpu01"),
    ("'/srv/models/add_sub' | basename", "add_sub"), ("'/srv/models/add_sub' | dirname", "/srv/models"),
    ("\"it's a test\" | quote", "'it'\"'\"'s a test'"), ("none | quote", "''"),
    ("'tritonfleet é' | b64encode", "dHJpdG9uZmxlZXQgw6k="), ("'dHJpdG9uZmxlZXQgw6k=' | b64decode", "tritonfleet é"),
    ("{'a': 1, 'b': {'c': 1, 'd': [1]}} | combine({'b': {'c': 2}})", {"a": 1, "b": {"c": 2}}),
    ("{'a': 1, 'b': {'c': 1, 'd': [1]}} | combine({'b': {'c': 2}}, recursive=true)",
     {"a": 1, "b": {"c": 2, "d": [1]}}),
    ("{'a': [1, 2]} | combine({'a': [2, 3]}, list_merge='append_rp')", {"a": [1, 2, 3]}),
    ("[{'a': 1}, {'b': 2}, {'a': 3}] | combine", {"a": 3, "b": 2}),
    ("{'a': 1, 'b': 2} | dict2items", [{"key": "a", "value": 1}, {"key": "b", "value": 2}]),
    ("[{'k': 'a', 'v': 1}] | items2dict(key_name='k', value_name='v')", {"a": 1}),
    ("[1, [2, [3]], none] | flatten", [1, 2, 3]), ("'a,b' | split(',')", ["a", "b"]),
    ("['/srv', 'models'] | path_join", "/srv/models"),
    ("'1' | int + '2.5' | float", 3.5), ("missing | default('x')", "x"),
])
def test_filters_give_ansible_results(expression, expected):
    assert evaluate(expression, SERVER) == expected


@pytest.mark.parametrize("expression, expected", [
    ("'no' is truthy", True), ("'no' is truthy(convert_bool=true)", False), ("'' is falsy", True),
    ("'off' is falsy(convert_bool=true)", True), ("'maybe' is truthy(convert_bool=true)", True),
    ("missing is defined", False), ("name is defined", True),
    ("name is match('gpu\\\\d+')", True), ("('x' ~ name) is match('gpu')", False),
    ("('x' ~ name) is search('gpu')", True),
    ("'XGPU' is search('gpu', ignorecase=true)", True), ("'xgpu01' is regex('gpu', match_type='match')", False),
    ("'2.50.0' is version('2.9', '>=')", True), ("'1.10' is version('1.9', 'gt')", True),
    ("'1.0' is version('1.0.0', '==')", False), ("'1.0rc1' is version('1.0', '<')", False),
    ("'24.08' is version('24.08')", True), ("'3.9.2' is version_compare('3.10', 'lt')", True),
    ("['a'] is subset(tags)", True), ("['a', 'c'] is subset(tags)", False), ("tags is superset(['b'])", True),
])
def test_tests_give_ansible_results(expression, expected):
    assert evaluate(expression, SERVER) is expected


@pytest.mark.parametrize("expression, reason", [
    ("missing | mandatory", "Mandatory variable 'missing' not defined."),
    ("missing | mandatory('set missing in the inventory')", "set missing in the inventory"),
    # Ansible 2.18 reads any non-boolean as false; a typo here is refused instead
    ("'maybe' | bool", "bool: 'maybe' is not a boolean (yes/no, true/false, on/off, 1/0)"),
    ("'1.0a' is version('1.0.1', '<')", "version: cannot compare '1.0a' with '1.0.1'"),
    ("'1' is version('2', 'bigger')", "version: invalid operator 'bigger'"),
    ("'1' is version('2', strict=true)", "only loose version comparison"),
    ("'a' | regex_replace('a', 'b', mandatory_count=2)", "should match 2 times, but matches 1 times"),
    ("[1] | dict2items", "dict2items requires a dictionary, got list instead."),
    ("[{'key': 1}] | items2dict", "items2dict requires a list of dictionaries with the keys 'key' and 'value'"),
    ("{'a': [1]} | combine({'a': [2]}, list_merge='merge')", "combine: list_merge must be one of replace"),
    ("'{' | from_json", "Expecting property name enclosed in double quotes"),
    ("1/0", "division by zero (ZeroDivisionError)"),
    ("'a' + 1", 'can only concatenate str (not "int") to str (TypeError)'),
    ("missing + 1", "'missing' is undefined"),
])
def test_failures_are_render_errors_that_say_why(expression, reason):
    with pytest.raises(RenderError) as err:
        evaluate(expression, SERVER)
    assert reason in err.value.reason
    assert str(err.value).startswith(f"cannot render {expression!r}: ")


def test_render_text_fails_with_the_template_and_the_reason():
    assert render_text("port={{ port }}\n", SERVER) == "port=8000\n"
    with pytest.raises(RenderError, match=r"cannot render 'p={{ port / 0 }}': division by zero"):
        render_text("p={{ port / 0 }}", SERVER)


def test_yaml_output_takes_values_read_by_tritonfleets_yaml_loader(tmp_path):
    path = tmp_path / "vars.yml"
    path.write_text("conf:\n  b: 1\n  a: [1, x y]\n")
    conf = load_yaml(path)["conf"]
    assert yaml.safe_load(evaluate("conf | to_nice_yaml", {"conf": conf})) == {"a": [1, "x y"], "b": 1}


@pytest.mark.parametrize("source, words", [
    ("{% if x %}{{ x | to_jsn }}{% endif %}", "no filter named 'to_jsn' (did you mean to_json"),
    ("x is versoin('1')", "no test named 'versoin' (did you mean version"),
    ("{{ x ", "unexpected end of template"),
])
def test_unknown_filters_and_tests_are_found_before_rendering(source, words):
    with pytest.raises(Exception) as err:
        checked_tree(source, expression=" is " in source)
    assert words in str(err.value)


def test_a_variable_the_template_checks_for_itself_is_not_needed():
    assert variables_needed(checked_tree("a is defined and b | default(1) > c", expression=True)) == {"c"}
    assert variables_needed(checked_tree("{{ a | default(1) }} {{ a }} {{ b.c | default(1) }}")) == {"b"}
    assert variables_needed(checked_tree("{% set n = 1 %}{{ n }}{{ range(3) | list }}")) == set()

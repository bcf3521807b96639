"""rsync's itemized changes become models added, removed and changed."""

from tritonfleet.fleet.modeldiff import ModelDiff, parse_itemized


def test_itemized_changes_sorted_by_model():
    out = "\n".join([
        ".d..t...... ./",
        "cd+++++++++ newm/",
        ">f+++++++++ newm/config.pbtxt",
        "*deleting   gone/1/model.py",
        "*deleting   gone/",
        ">f.st...... add_sub/1/model.py",
        ".f..t...... add_sub/config.pbtxt",
        ">f+++++++++ add_sub/2/model.py",
        "*deleting   str_upper/1/old.py",
    ])
    diff = ModelDiff("h")
    parse_itemized(out, diff)
    assert diff.added == ["newm"] and diff.removed == ["gone"]
    assert diff.changed == {"add_sub": ["1/model.py (changed)", "2/model.py (new)"],
                            "str_upper": ["1/old.py (deleted)"]}

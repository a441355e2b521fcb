"""jaxlm.outputs, the one write path: complete or absent, never over an input, no temporaries left."""

import pytest

from jaxlm.errors import JaxlmError
from jaxlm.outputs import check_output, output_path, write_file

DEAD = 2**22 + 4321  # above the default pid_max: no such process


def test_a_folder_appears_complete_and_replaces_the_previous_one(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with output_path(out) as tmp:
        (tmp / "x").write_text("1")
        assert not out.exists()
    assert (out / "x").read_text() == "1"
    with output_path(out, overwrite=True) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["y"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no .tmp- / .old- left


def test_a_failure_keeps_the_previous_output_and_removes_everything_it_made(tmp_path):
    write_file(tmp_path / "keep" / "f.txt", "old")
    with pytest.raises(RuntimeError):
        with output_path(tmp_path / "keep", overwrite=True) as tmp:
            (tmp / "half").write_text("half-written")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert (tmp_path / "keep" / "f.txt").read_text() == "old"
    with pytest.raises(RuntimeError):
        with output_path(tmp_path / "new" / "deeper" / "out") as tmp:
            raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()  # the parents it created are gone too


def test_leftovers_of_a_killed_process_are_cleaned_and_a_displaced_output_comes_back(tmp_path):
    (tmp_path / f".out.tmp-{DEAD}").mkdir()
    (tmp_path / f".out.old-{DEAD}").mkdir()  # killed between the two renames of a replace
    (tmp_path / f".out.old-{DEAD}" / "f").write_text("previous")
    (tmp_path / ".other.tmp-1").mkdir()  # pid 1 is alive: not ours to touch
    with pytest.raises(JaxlmError, match="exists and is not empty"):  # the previous output is back first
        check_output(tmp_path / "out")
    assert (tmp_path / "out" / "f").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1", "out"]


@pytest.mark.parametrize("rel,relation", [("run", "is"), (".", "contains"), ("run/sub", "lies inside")])
def test_an_output_overlapping_an_input_is_refused_even_with_overwrite(tmp_path, rel, relation):
    (tmp_path / "run").mkdir()
    with pytest.raises(JaxlmError, match=f"{relation} the input"):
        check_output(tmp_path / rel, overwrite=True, inputs=[tmp_path / "run"])


def test_a_symlink_to_an_input_is_the_input(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    with pytest.raises(JaxlmError, match="is the input"):
        check_output(tmp_path / "link", overwrite=True, inputs=[tmp_path / "run"])

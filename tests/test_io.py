"""The staged writes of _io.py: whole or nothing, and the user's umask on what is saved (issue 23)."""

import os
import stat

import pytest

from hf_vanilla_transformer._io import check_free, publish_folder, staged_folder, write_file


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_staged_folder_lands_whole_with_the_umask(tmp_path, umask_027):
    target = tmp_path / "out" / "model"
    with staged_folder(target) as staging:
        (staging / "a.txt").write_text("a")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "a"
    assert mode(target) == 0o750
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_staged_folder_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), staged_folder(target) as staging:
        (staging / "a.txt").write_text("a")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_refuses_a_non_empty_target(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not empty"), staged_folder(target):
        pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileExistsError, match="not empty"), staged_folder(empty) as staging:
        (staging / "a.txt").write_text("a")
        (empty / "late.txt").write_text("appeared meanwhile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]
    assert (target / "old.txt").read_text() == "old"
    with staged_folder(tmp_path / "new") as staging:  # an empty folder is taken
        pass
    check_free(tmp_path / "new")


def test_merge_moves_files_in_and_keeps_the_others(tmp_path, umask_027):
    target = tmp_path / "run"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (target / "model.bin").write_text("old")
    (target / "sub").mkdir()
    (target / "sub" / "old.txt").write_text("old")
    with staged_folder(target, merge=True) as staging:
        assert staging.parent == target and staging.name.startswith("_")
        (staging / "model.bin").write_text("new")
        (staging / "sub").mkdir()
        (staging / "sub" / "new.txt").write_text("new")
    assert (target / "model.bin").read_text() == "new"
    assert (target / "keep.txt").read_text() == "keep"
    assert [p.name for p in (target / "sub").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt", "model.bin", "sub"]
    assert mode(target / "model.bin") == 0o640


def test_replace_swaps_an_existing_folder(tmp_path):
    target = tmp_path / "checkpoint-2"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = tmp_path / ".staging" / "checkpoint-2"
    staging.mkdir(parents=True)
    (staging / "new.txt").write_text("new")
    publish_folder(staging, target, replace=True)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging", "checkpoint-2"]
    assert list((tmp_path / ".staging").iterdir()) == []


def test_write_file_is_atomic_with_the_umask(tmp_path, umask_027):
    path = tmp_path / "README.md"
    path.write_text("old")
    os.chmod(path, 0o600)
    write_file(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert mode(path) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_write_file_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_file(path, b"not text")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]

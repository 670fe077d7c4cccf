"""vinbig/manifest.py: a clean-up removes only what vinbig wrote, and a crafted manifest cannot reach outside."""

from __future__ import annotations

import json
import os

import pytest

from vinbig.errors import UserError
from vinbig.manifest import MANIFEST, Manifest


def test_stale_files_go_and_a_users_file_stays(tmp_path):
    out = tmp_path / "report"
    m = Manifest.claim(out, "report", "--out")
    (out / "overlays").mkdir()
    m.add([out / "overlays" / "a.png", "overlays/b.png"])
    for name in ("a.png", "b.png", "mine.png"):
        (out / "overlays" / name).write_bytes(b"png")

    again = Manifest.claim(out, "report", "--out")  # a rerun reads what the first run wrote
    assert again.files == {"overlays/a.png", "overlays/b.png"}
    removed = again.remove_stale(["overlays/a.png"], within="overlays")

    assert removed == [out / "overlays" / "b.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "mine.png"]
    assert Manifest.read(out).files == {"overlays/a.png"}


def test_remove_stale_within_leaves_other_folders(tmp_path):
    m = Manifest.claim(tmp_path / "o", "predict", "--out")
    for rel in ("overlays/x.png", "gsps/x.dcm"):
        (tmp_path / "o" / rel).parent.mkdir(exist_ok=True)
        (tmp_path / "o" / rel).write_bytes(b"1")
    m.add(["overlays/x.png", "gsps/x.dcm"])
    m.remove_stale([], within="gsps")
    assert (tmp_path / "o/overlays/x.png").is_file() and not (tmp_path / "o/gsps/x.dcm").exists()


@pytest.mark.parametrize("overwrite, fix", [(None, "give an empty or new folder"), (False, "--overwrite")])
def test_a_folder_vinbig_did_not_make_is_refused(tmp_path, overwrite, fix):
    (tmp_path / "train.csv").write_text("image_id\n")
    with pytest.raises(UserError) as e:
        Manifest.claim(tmp_path, "synth", "--out of 'vinbig synth'", overwrite=overwrite)
    assert str(tmp_path) in str(e.value) and fix in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / MANIFEST).exists()


def test_another_kind_of_output_is_refused_and_overwrite_removes_nothing(tmp_path):
    m = Manifest.claim(tmp_path, "predict", "--out")
    (tmp_path / "predictions.csv").write_text("x")
    m.add(["predictions.csv"])
    for overwrite in (None, False, True):
        with pytest.raises(UserError, match="holds vinbig's predict output"):
            Manifest.claim(tmp_path, "report", "--out", overwrite=overwrite)
    assert Manifest.read(tmp_path).kind == "predict"

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    taken = Manifest.claim(tmp_path / "mine", "report", "--out", overwrite=True)
    assert taken.files == set() and taken.remove_stale([]) == []
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"


@pytest.mark.parametrize("overwrite", [None, False, True])
def test_own_refuses_a_file_vinbig_did_not_write_unless_overwrite(tmp_path, overwrite):
    m = Manifest.claim(tmp_path / "o", "report", "--out")
    (tmp_path / "o" / "index.html").write_text("the user's")
    (tmp_path / "o" / "metrics.csv").write_text("vinbig's")
    m.add(["metrics.csv"])
    if overwrite:
        m.own(["index.html", "metrics.csv"], "report folder", overwrite)
        assert m.files == {"index.html", "metrics.csv"}
        return
    with pytest.raises(UserError) as e:
        m.own(["index.html", "metrics.csv", "new.png"], "report folder", overwrite)
    assert "holds index.html, which vinbig did not write" in str(e.value)
    assert ("--overwrite" in str(e.value)) == (overwrite is False)
    assert m.files == {"metrics.csv"}


def test_empty_or_missing_folders_are_taken(tmp_path):
    (tmp_path / "empty").mkdir()
    assert Manifest.claim(tmp_path / "empty", "export", "--out").kind == "export"
    assert Manifest.claim(tmp_path / "new" / "deep", "export", "--out").path.is_file()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        Manifest.claim(tmp_path / "file", "export", "--out")


def test_a_crafted_manifest_cannot_delete_outside_its_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "export"
    (out / "sub").mkdir(parents=True)
    os.symlink(tmp_path, out / "link")
    entries = ["../victim.txt", str(victim), "link/victim.txt", "sub/../../victim.txt", "sub\\..\\..\\victim.txt",
               "", 7, None]
    (out / MANIFEST).write_text(json.dumps({"kind": "export", "files": entries}))

    m = Manifest.claim(out, "export", "--out")
    m.remove_stale([])

    assert victim.read_text() == "keep"
    assert (out / "link").is_symlink()


@pytest.mark.parametrize("text", ["", "{", "[]", '{"kind": "export"}', '{"kind": 1, "files": []}'])
def test_an_unreadable_manifest_is_no_manifest(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    assert Manifest.read(tmp_path) is None
    with pytest.raises(UserError, match="did not write"):
        Manifest.claim(tmp_path, "export", "--out")

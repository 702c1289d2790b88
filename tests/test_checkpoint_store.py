"""The one checkpoint store (medsynth_app.weights) and the versioned user model folder, on the shipped checkpoints."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from medsynth_app.checkpoint import CheckpointError, load_checkpoint
from medsynth_app.checkpoint_versions import CheckpointVersions
from medsynth_app.weights import CheckpointStore, UnknownCheckpointError, choose, find, weight_folders
from medsynth_server.resources import SHIPPED_WEIGHTS

MULTIMODAL = sorted(SHIPPED_WEIGHTS.glob("multimodal_*.pt"))


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("MEDSYNTH_WEIGHTS", raising=False)
    for name in ("linear_T1+T2_to_FLAIR.pt", "linear_T1_to_T2.pt"):
        shutil.copy(SHIPPED_WEIGHTS / name, tmp_path / name)
    return tmp_path


def test_folders_environment_first_then_the_callers_each_once(folder, tmp_path_factory, monkeypatch):
    other = tmp_path_factory.mktemp("other")
    monkeypatch.setenv("MEDSYNTH_WEIGHTS", os.pathsep.join([str(other), str(folder)]))
    assert weight_folders([folder, SHIPPED_WEIGHTS])[:3] == [other, folder, SHIPPED_WEIGHTS]


def test_the_first_folder_wins_and_a_changed_file_is_reloaded(folder):
    store = CheckpointStore([folder, SHIPPED_WEIGHTS])
    first = dict((p.name, (p, c)) for p, c in store.checkpoints("linear"))
    assert first["linear_T1_to_T2.pt"][0] == folder / "linear_T1_to_T2.pt"
    assert store.checkpoints("linear")[0][1] is first["linear_T1+T2_to_FLAIR.pt"][1]  # kept, not re-read
    ckpt = load_checkpoint(folder / "linear_T1_to_T2.pt")
    ckpt.created = "retrained"
    from medsynth_app.checkpoint import save_checkpoint

    save_checkpoint(ckpt, folder / "linear_T1_to_T2.pt")
    reloaded = dict((p.name, c) for p, c in store.checkpoints("linear"))
    assert reloaded["linear_T1_to_T2.pt"].created == "retrained"
    (folder / "linear_T1_to_T2.pt").write_bytes(b"damaged")  # a damaged file keeps the weights loaded before
    assert dict((p.name, c) for p, c in store.checkpoints("linear"))["linear_T1_to_T2.pt"].created == "retrained"


def test_choose_prefers_the_model_trained_for_exactly_the_available_inputs():
    served = [(p, load_checkpoint(p)) for p in MULTIMODAL]
    assert choose(served, "FLAIR", ["T1", "T2"])[0].name == "multimodal_T1+T2_to_FLAIR.pt"
    path, _, used = choose(served, "FLAIR", ["T1", "T2", "T1C"])
    assert path.name == "multimodal_T1+T1C+T2+FLAIR_to_T1+T1C+T2+FLAIR.pt" and used == ["T1", "T1C", "T2"]
    assert choose(served, "T2", ["T1", "FLAIR"], name=MULTIMODAL[0].name)[0] == MULTIMODAL[0]
    with pytest.raises(UnknownCheckpointError, match="nobody.pt"):
        choose(served, "T2", ["T1"], name="nobody.pt")
    with pytest.raises(CheckpointError, match="does not synthesise PD"):
        choose(served, "PD", ["T1"])


def test_find_names_what_is_missing(folder):
    assert find("linear", "FLAIR", ["T1", "T2"], extra=[folder])[0] == folder / "linear_T1+T2_to_FLAIR.pt"
    with pytest.raises(CheckpointError, match="missing T2"):
        find("linear", "FLAIR", ["T1"], extra=[folder])


def test_versions_are_kept_served_by_link_and_restored(tmp_path):
    name = "linear_T1+T2_to_FLAIR.pt"
    ckpt = load_checkpoint(SHIPPED_WEIGHTS / name)
    versions = CheckpointVersions(tmp_path)
    assert versions.served(name) is None
    first, second = versions.add(ckpt, name), versions.add(ckpt, name)
    assert [p.name for p in versions.versions(name)] == ["v0001.pt", "v0002.pt"]
    versions.serve(name, first)
    versions.serve(name, second)
    store = CheckpointStore([versions.served_dir, SHIPPED_WEIGHTS])
    assert dict(store.checkpoints("linear"))[versions.served_dir / name] is not None
    assert versions.restore_previous(name) == first and versions.served(name) == first
    assert versions.restore_previous(name) is None and not (versions.served_dir / name).exists()
    served = dict((p.name, p) for p, _ in store.checkpoints("linear"))
    assert served[name] == SHIPPED_WEIGHTS / name  # the shipped checkpoint serves again
    with pytest.raises(ValueError, match="nothing was served"):
        versions.restore_previous(name)
    with pytest.raises(ValueError, match="not a saved version"):
        versions.serve(name, SHIPPED_WEIGHTS / name)

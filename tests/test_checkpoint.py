import numpy as np
import pytest
import torch

from medsynth_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from medsynth_app.models import create


def _checkpoint():
    model = create("linear", ["T1"], ["T2"])
    model.coef = {"T2": np.arange(9, dtype=np.float64)}
    return Checkpoint.from_model(model, target_norms={"T2": {"method": "mean", "offset": 0.0, "scale": 2.0}},
                                 training={"subjects": ["a"], "epochs": 1})


def test_round_trip_and_atomic_replacement(tmp_path):
    path = save_checkpoint(_checkpoint(), tmp_path / "m.pt")
    first = path.read_bytes()
    save_checkpoint(_checkpoint(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left
    loaded = load_checkpoint(path)
    assert loaded.family == "linear" and loaded.task == "T1->T2" and loaded.training["subjects"] == ["a"]
    assert np.array_equal(loaded.build().coef["T2"], np.arange(9))
    assert len(first) == len(path.read_bytes())


def test_damaged_and_foreign_files_are_refused_by_name(tmp_path):
    path = save_checkpoint(_checkpoint(), tmp_path / "m.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable MedSynth checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a MedSynth checkpoint"):
        load_checkpoint(foreign)


def test_wrong_inputs_fail_with_a_clear_message():
    model = _checkpoint().build()
    with pytest.raises(ValueError, match="linear needs T1; missing T1"):
        model.usable_inputs(["T2", "FLAIR"])
    with pytest.raises(ValueError, match="T2 is both an input and a target"):
        create("linear", ["T1", "T2"], ["T2"])


SHIPPED = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "apps" / "medsynth" / "model").glob("*.pt"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_checkpoint_loads_builds_and_keeps_its_training_schedule(path):
    """Checkpoints written before the schedule became its own settings object carry it among their hparams: they
    still load and build, and `Schedule.of` reads the schedule they trained with from there."""
    from medsynth_app.models import TrainSettings
    from medsynth_app.training.schedule import SCHEDULE_SETTINGS, Schedule, amp_mode

    checkpoint = load_checkpoint(path)
    model = checkpoint.build()
    assert model.family == checkpoint.family and list(model.targets) == checkpoint.targets
    if model.trains_on_a_schedule:
        assert set(model.hparams).isdisjoint(SCHEDULE_SETTINGS)  # architecture and loss apart from the schedule
        assert model.recorded_hparams() == {**checkpoint.hparams, **{k: v for k, v in model.recorded_hparams().items()
                                                                      if k not in checkpoint.hparams}}
    schedule = Schedule.of(TrainSettings(), model.schedule)
    for key, value in checkpoint.hparams.items():
        if key in SCHEDULE_SETTINGS and value is not None:
            assert getattr(schedule, key) == (amp_mode(value) if key == "amp" else value), key

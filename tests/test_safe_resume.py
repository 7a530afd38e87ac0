"""Files from places a user does not control load without running code; resumed training is exact for every
variant; a checkpoint is resumed only by the code and hardware that wrote it, and a corrupt one does not block
reruns."""

from __future__ import annotations

import pytest
import torch

from pipeline.lib import training
from pipeline.lib.classifier import load_classifier
from pipeline.lib.config import DataConfig, parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.io import DataError
from pipeline.lib.models import load_model
from pipeline.lib.training import RunFiles, train_run
from pipeline.tracking import NoOpTracker
from tests.conftest import TINY_SPEC
from tests.fakedata import make_emnist_dir

RATE_SPEC = {**TINY_SPEC, "latent_dim": 4, "rate_weight": 0.01}  # trains with uniform noise from the global RNG


class Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("load", [lambda p: load_model(p, torch.device("cpu")),
                                  lambda p: load_classifier(p, torch.device("cpu"))])  # fmt: skip
def test_a_model_file_that_carries_code_is_refused_not_run(load, tmp_path):
    marker, bad = tmp_path / "pwned", tmp_path / "model.pt"
    torch.save({"spec": Payload(marker), "state_dict": {}}, bad)
    with pytest.raises(DataError, match="refused"):
        load(bad)
    assert not marker.exists()


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    directory = make_emnist_dir(tmp_path_factory.mktemp("data") / "emnist")
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_from_directory(DataConfig(source=str(directory)), directory, out)
    return out


def params(epochs: int = 2):
    return parse_params({"variants": {"rd": RATE_SPEC}, "train": {"epochs": epochs, "batch_size": 64, "threads": 1,
                                                                   "precision": "fp32"}})  # fmt: skip


def files(directory) -> RunFiles:
    directory.mkdir(parents=True, exist_ok=True)
    return RunFiles(directory / "m.pt", directory / "m.best.pt", directory / "h.csv", directory / "m.ckpt")


def train(prepared_dir, out: RunFiles, p=None):
    return torch.load(train_run(p or params(), "rd", 0, prepared_dir, out, NoOpTracker(), {}, {}), weights_only=True)


def interrupt_after_first_epoch(prepared_dir, out: RunFiles, monkeypatch) -> None:
    fit = training.Trainer.fit

    def stop_after_first_epoch(self, train_x, val_x, on_epoch):
        def once(row):
            on_epoch(row)
            raise KeyboardInterrupt("killed after epoch 1")

        fit(self, train_x, val_x, once)

    monkeypatch.setattr(training.Trainer, "fit", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(prepared_dir, out)
    monkeypatch.setattr(training.Trainer, "fit", fit)
    assert out.checkpoint.exists()


def test_a_resumed_rate_variant_ends_with_the_uninterrupted_weights(prepared_dir, tmp_path, monkeypatch):
    whole = train(prepared_dir, files(tmp_path / "whole"))
    interrupted = files(tmp_path / "interrupted")
    interrupt_after_first_epoch(prepared_dir, interrupted, monkeypatch)
    resumed = train(prepared_dir, interrupted)  # a new Trainer, seeded afresh, as in a new process
    assert all(torch.equal(whole["state_dict"][k], resumed["state_dict"][k]) for k in whole["state_dict"])


def test_a_corrupt_checkpoint_is_ignored_and_training_starts_over(prepared_dir, tmp_path):
    out = files(tmp_path / "run")
    out.checkpoint.write_bytes(b"not a checkpoint")
    saved = train(prepared_dir, out)
    assert saved["epochs"] == 2 and not out.checkpoint.exists()


HARDWARE = {"precision_used": "fp32", "processor": "a CPU", "threads_used": 2}


def test_a_checkpoint_of_other_code_torch_or_hardware_is_not_resumed(monkeypatch):
    p = params()
    job = training.fingerprint(p, "rd", 0, "data", HARDWARE)
    for other in ({"precision_used": "bf16"}, {"processor": "another CPU"}, {"threads_used": 1}):
        assert training.fingerprint(p, "rd", 0, "data", {**HARDWARE, **other}) != job
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "other kernels")
    assert training.fingerprint(p, "rd", 0, "data", HARDWARE) != job
    monkeypatch.undo()
    monkeypatch.setattr(training, "code_digest", lambda: "other code")
    assert training.fingerprint(p, "rd", 0, "data", HARDWARE) != job
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert training.fingerprint(p, "rd", 0, "data", HARDWARE) != job


def test_a_checkpoint_written_on_another_machine_starts_the_run_over(prepared_dir, tmp_path, monkeypatch, capsys):
    out = files(tmp_path / "run")
    monkeypatch.setattr(training, "processor_name", lambda device: "the machine that wrote it")
    interrupt_after_first_epoch(prepared_dir, out, monkeypatch)
    monkeypatch.setattr(training, "processor_name", lambda device: "another machine")
    capsys.readouterr()
    saved = train(prepared_dir, out)
    printed = capsys.readouterr().out
    assert "written for other params, data, code or hardware" in printed and "resuming" not in printed
    assert saved["epochs"] == 2 and saved["processor"] == "another machine"


def test_editing_a_training_module_changes_the_code_digest(tmp_path, monkeypatch):
    from pipeline.lib import losses, models

    before = training.code_digest()
    for module in (models, losses):
        edited = tmp_path / f"{module.__name__}.py"
        edited.write_text(open(module.__file__).read() + "\n# edited\n")
        monkeypatch.setattr(module, "__file__", str(edited))
        assert training.code_digest() != before, module.__name__
        monkeypatch.undo()

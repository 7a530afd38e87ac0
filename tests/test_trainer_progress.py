"""What training prints: each epoch's line says the time left until the last epoch; a probe's steps print no bar."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from pipeline.lib import trainer as trainer_module
from pipeline.lib.config import parse_params
from pipeline.lib.trainer import Trainer
from tests.conftest import TINY_SPEC

CPU = torch.device("cpu")


def tiny_trainer(epochs: int, images: torch.Tensor) -> Trainer:
    params = parse_params(
        {"variants": {"tiny": TINY_SPEC}, "train": {"epochs": epochs, "batch_size": 32, "device": "cpu", "threads": 1}}
    )
    return Trainer(params, "tiny", 0, CPU, train_images=len(images))


def test_every_epoch_but_the_last_says_the_time_left(capsys, monkeypatch):
    # fit reads the clock at an epoch's start, after training, after validation: epochs of 10 s then 40 s in all
    clock = iter([0, 8, 10, 100, 130, 140, 200, 205, 210])
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    images = torch.rand(96, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    trainer = tiny_trainer(3, images)
    trainer.fit(images, images[:32], on_epoch=lambda row: None)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert re.search(r"\(8\.0 s, \d+ img/s\), 00:20 left$", lines[0]), lines  # 2 epochs of 10 s
    assert re.search(r"\(30\.0 s, \d+ img/s\), 00:25 left$", lines[1]), lines  # 1 epoch of the mean, 25 s
    assert lines[2].endswith("img/s)"), lines


def test_progress_false_prints_no_bar(capsys):
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    trainer = tiny_trainer(1, images)
    trainer.train_epoch(images, 0, progress=False)
    assert capsys.readouterr().err == ""
    trainer.train_epoch(images, 0)
    assert "epoch 1/1" in capsys.readouterr().err  # the bar this test turns off, where it appears

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
    # fit reads the clock at an epoch's start, after training, after validation: epochs of 10, 40, 10 and 10 s
    clock = iter([0, 8, 10, 100, 130, 140, 200, 205, 210, 300, 305, 310])
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    images = torch.rand(96, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    trainer = tiny_trainer(4, images)
    trainer.fit(images, images[:32], on_epoch=lambda row: None)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/4", "epoch 2/4", "epoch 3/4", "epoch 4/4"]
    assert re.search(r"\(8\.0 s, \d+ img/s\), 00:30 left$", lines[0]), lines  # 3 epochs of 10 s
    assert re.search(r"\(30\.0 s, \d+ img/s\), 00:50 left$", lines[1]), lines  # 2 epochs of the median, 25 s
    assert re.search(r"\(5\.0 s, \d+ img/s\), 00:10 left$", lines[2]), lines  # the slow one is not averaged in
    assert lines[3].endswith("img/s)"), lines


def test_progress_false_prints_no_bar(capsys):
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    trainer = tiny_trainer(1, images)
    trainer.train_epoch(images, 0, progress=False)
    assert capsys.readouterr().err == ""
    trainer.train_epoch(images, 0)
    assert "epoch 1/1" in capsys.readouterr().err  # the bar this test turns off, where it appears


def test_a_collapsed_model_is_named_after_its_epoch(capsys):
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    healthy, collapsed = tiny_trainer(1, images), tiny_trainer(1, images)
    convolutions = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    last = [m for m in collapsed.model.decoder.modules() if isinstance(m, convolutions)][-1]
    torch.nn.init.constant_(last.bias, -1e4)  # the sigmoid's output is 0 for every image, as in a collapsed run
    healthy.fit(images, images[:32], on_epoch=lambda row: None)
    assert "warning" not in capsys.readouterr().out
    collapsed.fit(images, images[:32], on_epoch=lambda row: None)
    assert "warning: after epoch 1, the model decodes every val image to the same image" in capsys.readouterr().out

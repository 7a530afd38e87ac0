"""The study stage: the study's published weights, fetched and verified, measured like any run."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline import paths
from pipeline.lib import prepared, report_findings, report_tables, report_text, schema
from pipeline.lib.config import parse_params
from pipeline.lib.dataset import prepare_from_directory
from pipeline.lib.keras_weights import study_files
from pipeline.lib.models import load_model
from pipeline.stages import classifier as classifier_stage
from pipeline.stages import study as study_stage
from pipeline.tracking import NoOpTracker
from tests.conftest import TINY_SPEC
from tests.fakedata import fake_study_weights, make_emnist_dir

MODEL = "model01"  # a study model's name (pipeline/reference.yaml has its logged losses), a tiny architecture


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """Prepared tiny data, the classifier, and the study's files for MODEL in a directory, made once."""
    root = tmp_path_factory.mktemp("project")
    raw = {
        "data": {"source": str(make_emnist_dir(tmp_path_factory.mktemp("emnist") / "emnist"))},
        "train": {"threads": 1},
        "classifier": {"epochs": 1, "batch_size": 32},
        "variants": {MODEL: TINY_SPEC},
        "study": {"models": [MODEL], **fake_study_weights(tmp_path_factory.mktemp("weights"), MODEL)},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPRESSNET_ROOT", str(root))
        params = parse_params(raw)
        prepare_from_directory(params.data, Path(raw["data"]["source"]), paths.prepared_dir())
        classifier_stage.train_classifier(params, NoOpTracker())
    return {"root": root, "raw": raw}


@pytest.fixture
def project(base, monkeypatch) -> dict:
    monkeypatch.setenv("COMPRESSNET_ROOT", str(base["root"]))
    for output in (paths.study_model_file(MODEL), paths.study_metrics_file(MODEL)):
        output.unlink(missing_ok=True)
    return {**base["raw"], "study": dict(base["raw"]["study"])}


def run(raw: dict, capsys) -> tuple[int, str]:
    params_file = paths.root() / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    code = study_stage.main([MODEL, "--params", str(params_file)])
    return code, capsys.readouterr().err


def outputs() -> list[Path]:
    return [p for p in (paths.study_model_file(MODEL), paths.study_metrics_file(MODEL)) if p.exists()]


def test_the_published_weights_are_measured_by_the_evaluate_code(project, mlflow_store):
    result = study_stage.study(parse_params(project), MODEL, NoOpTracker())
    written = schema.load(paths.study_metrics_file(MODEL))
    assert written == result and written["variant"] == MODEL and written["seed"] == -1
    reference = yaml.safe_load(paths.REFERENCE_FILE.read_text())
    assert written["train_loss"] == reference["reported"][MODEL]["train_loss"] and written["epochs"] == 15
    model, saved = load_model(paths.study_model_file(MODEL), torch.device("cpu"))
    assert saved["source_sha256"] == dict(
        reversed(line.split()) for line in Path(project["study"]["checksums"]).read_text().splitlines()
    )
    images = torch.from_numpy(prepared.load_split(paths.prepared_dir(), "test")[0][:, None] / 255.0).float()
    with torch.no_grad():
        assert written["mse"] == pytest.approx(float((model(images) - images).square().mean()), rel=1e-5)


def test_a_file_that_is_not_the_pinned_one_is_refused_and_nothing_is_written(project, tmp_path, capsys):
    source = Path(project["study"]["source"])
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in study_files(MODEL):
        (tampered / name).write_bytes((source / name).read_bytes())
    with (tampered / study_files(MODEL)[1]).open("ab") as f:
        f.write(b"\0")
    project["study"]["source"] = str(tampered)
    code, err = run(project, capsys)
    assert code == 1 and "sha256 mismatch" in err and study_files(MODEL)[1] in err
    assert outputs() == []


def test_a_file_without_a_pinned_checksum_is_refused(project, tmp_path, capsys):
    (tmp_path / "SHA256SUMS").write_text(Path(project["study"]["checksums"]).read_text().splitlines()[0] + "\n")
    project["study"]["checksums"] = str(tmp_path / "SHA256SUMS")
    code, err = run(project, capsys)
    assert code == 1 and "no pinned sha256" in err and outputs() == []


class Files(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.server.files.get(self.path.rsplit("/", 1)[-1])
        self.server.requests.append(self.path)
        if body is None:
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(project):
    source = Path(project["study"]["source"])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    httpd.files = {name: (source / name).read_bytes() for name in study_files(MODEL)}
    httpd.requests = []
    for name in study_files(MODEL):  # no verified copy from an earlier test
        (paths.study_raw_dir() / name).unlink(missing_ok=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_the_pinned_files_are_downloaded_once_and_verified(project, server, mlflow_store, capsys):
    project["study"].update(source="github", url=f"http://127.0.0.1:{server.server_address[1]}/commit/models")
    assert run(project, capsys)[0] == 0
    assert sorted(server.requests) == sorted(f"/commit/models/{name}" for name in study_files(MODEL))
    for name in study_files(MODEL):
        digest = hashlib.sha256((paths.study_raw_dir() / name).read_bytes()).hexdigest()
        assert digest == hashlib.sha256(server.files[name]).hexdigest()
    assert run(project, capsys)[0] == 0 and len(server.requests) == 2  # the verified copies are reused


def test_a_download_that_is_not_the_pinned_file_is_deleted(project, server, capsys):
    server.files[study_files(MODEL)[0]] = b"PK not the study's encoder"
    project["study"].update(source="github", url=f"http://127.0.0.1:{server.server_address[1]}/models")
    code, err = run(project, capsys)
    assert code == 1 and "is not the pinned" in err
    assert not (paths.study_raw_dir() / study_files(MODEL)[0]).exists() and outputs() == []


def test_offline_says_how_to_use_a_local_copy(project, capsys):
    project["study"].update(source="github", url="http://127.0.0.1:9/models")  # nothing listens on port 9
    for name in study_files(MODEL):
        (paths.study_raw_dir() / name).unlink(missing_ok=True)
    code, err = run(project, capsys)
    assert code == 1 and "add STUDY=" in err and "study.source" in err and outputs() == []


def test_the_report_shows_the_measured_study_row_beside_its_variant():
    reference = yaml.safe_load(paths.REFERENCE_FILE.read_text())
    ours = {"epochs": 2, "n_test": 94, "train_loss": 0.02, "val_loss": 0.021, "mse": 0.02, "ssim": 0.8}
    means = pd.DataFrame([{**ours, "psnr": 17.0, "psnr_pooled": 17.0, "dead_latent_units": 3}])
    means.index = [MODEL]
    measured = {"variant": MODEL, "n_test": 94, "train_loss": 0.00379, "val_loss": 0.00401, "mse": 0.0042}
    study = pd.DataFrame([{**measured, "ssim": 0.97, "psnr": 25.0, "psnr_pooled": 24.0}])
    study["dead_latent_units"] = 4
    table = report_tables.study_table(means, 3, reference, study.set_index(pd.Index([MODEL])))
    row = table.loc[(MODEL, "study, published weights (94 img)")]
    assert row.mse == 0.0042 and row.dead_latent_units == 4
    assert pd.isna(row.train_loss) and pd.isna(row.val_loss)  # the study's logged losses: its reported row's, not ours
    assert (MODEL, "study, reported (10 img)") in table.index
    assert report_tables.study_table(means, 3, reference, study.iloc[:0]).index.get_level_values(1).tolist() == [
        "CompressNet (2 ep, 3 seeds, 94 img)",
        "study, reported (10 img)",
    ]


def test_the_report_names_each_collapsed_run():
    runs = pd.DataFrame({"variant": [MODEL, MODEL, "model02"], "seed": [0, 1, 1], "collapsed": [False, True, True]})
    assert report_findings.collapsed_finding(runs) == [
        "- Collapsed (every test image decodes to the same image): model01 seed 1, model02 seed 1; the means and tests "
        "above include them."
    ]
    assert report_findings.collapsed_finding(runs.assign(collapsed=False)) == []
    assert report_findings.collapsed_finding(runs.drop(columns="collapsed")) == []  # metrics from before the key


def test_the_report_checks_each_study_model_run_against_its_published_weights():
    runs = pd.DataFrame(
        {
            "variant": [MODEL, MODEL, "model02", "model01_linear"],
            "seed": [0, 1, 0, 0],
            "epochs": 15,
            "mse": [0.0044, 0.0048, 0.0040, 0.0030],
            "dead_latent_units": [2, 6, 3, 0],
        }
    )
    study = pd.DataFrame({"mse": [0.0040, 0.0110], "dead_latent_units": [4, 18]}, index=[MODEL, "model02"])
    check = report_tables.published_weights_check(runs, study, band=0.15)

    assert check.variant.tolist() == [MODEL, MODEL, "model02"]  # only the study's own models have published weights
    assert check.ratio.round(3).tolist() == [1.1, 1.2, 0.364]
    assert check["at_most_15%_above"].tolist() == [True, False, True]
    assert report_findings.published_weights_finding(check, band=0.15) == [
        "- Against the study's published weights: 2 of 3 runs of the study's models reach a test MSE at most 15% "
        "above theirs; above that: model01 seed 1 (1.20×, 6 dead latent units against 4); more than 15% below: "
        "model02 seed 0 (0.36×, 3 dead latent units against 18)."
    ]
    check = report_tables.published_weights_check(runs, study, band=0.25)
    assert check["at_most_25%_above"].all()
    assert report_findings.published_weights_finding(check, band=0.25) == [
        "- Against the study's published weights: 3 of 3 runs of the study's models reach a test MSE at most 25% "
        "above theirs; more than 25% below: model02 seed 0 (0.36×, 3 dead latent units against 18)."
    ]
    assert report_findings.published_weights_finding(check.iloc[:0], band=0.25) == []  # no study model in the matrix


def test_a_report_without_study_weights_says_so_instead_of_showing_empty_tables():
    runs = pd.DataFrame({"variant": [MODEL], "seed": [0], "epochs": 1, "mse": [0.01], "dead_latent_units": [3]})
    none = pd.DataFrame(columns=["mse", "dead_latent_units"])
    lines = report_text.study_sections(none, report_tables.published_weights_check(runs, none, 0.15), 0.15)
    assert "Not measured in this experiment (`study.models` is empty), so no run is compared with them." in lines
    assert not any(line.startswith("|") for line in lines)
    study = pd.DataFrame({"mse": [0.0110], "dead_latent_units": [18]}, index=["model02"])
    lines = report_text.study_sections(study, report_tables.published_weights_check(runs, study, 0.15), 0.15)
    assert "No variant of the matrix is a study model whose published weights were measured." in lines


def test_the_protocol_table_follows_a_study_models_runs_with_its_published_weights_on_the_same_images():
    protocol = lambda mse: {"indices": [3, 7], "mse": mse, "psnr": 25.0, "psnr_pooled": 24.0, "ssim": 0.97}  # noqa: E731
    runs = pd.DataFrame(
        {
            "variant": [MODEL, MODEL, "model01_linear"],
            "seed_protocol": [protocol(0.004), protocol(0.005), protocol(0.003)],
        },
        index=[f"{MODEL}-seed0", f"{MODEL}-seed1", "model01_linear-seed0"],
    )
    study = pd.DataFrame({"seed_protocol": [protocol(0.0031)]}, index=[MODEL])
    table = report_tables.protocol_table(runs, study)
    assert table.index.tolist() == [
        f"{MODEL}-seed0",
        f"{MODEL}-seed1",
        f"{MODEL} published weights",
        "model01_linear-seed0",
    ]
    assert table.mse.tolist() == [0.004, 0.005, 0.0031, 0.003]
    assert table.columns.tolist() == ["mse", "psnr", "psnr_pooled", "ssim"]
    assert report_tables.protocol_table(runs, pd.DataFrame(columns=["variant"])).index.tolist() == runs.index.tolist()

"""MlflowEBMDataset on a scratch sqlite store: format, registry, the model's own metrics, round trip."""

from __future__ import annotations

import logging

import mlflow
import pytest
import torch
from kedro.io.core import DatasetError
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from impetus.learned.models import LatentEBM, LatentEBMConfig, TextEBM, TextEBMConfig
from impetus.framework.mlflow_models import FORMAT_TAG, MlflowEBMDataset

UNRELATED = {"sampler/accuracy": 0.5, "grader/n_graded": 12.0, "scorer/latent/best_val_loss": 0.7}
LATENT_METRICS = {"train_loss": 0.61, "val_loss": 0.65, "val_auroc": 0.72, "val_pair_acc": 0.68, "best_epoch": 3.0}
TEXT_METRICS = {"train_loss": 0.5, "val_loss": 0.55, "best_epoch": 1.0}  # some keys may be missing


@pytest.fixture()
def client(tmp_path):
    """A scratch sqlite store as the global tracking URI (restored afterwards), experiment ``impetus``."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with _use_tracking_uri(uri):
        client = MlflowClient(uri)
        experiment_id = client.create_experiment("impetus", artifact_location=str(tmp_path / "a"))
        mlflow.set_experiment(experiment_id=experiment_id)
        yield client
        while mlflow.active_run():
            mlflow.end_run()


def _models() -> tuple[LatentEBM, TextEBM]:
    torch.manual_seed(0)
    latent = LatentEBM(LatentEBMConfig(input_dim=8, hidden=4, n_layers=1, dropout=0.1))
    text = TextEBM(TextEBMConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16, dropout=0.1))
    return latent, text


def _metrics_of(client: MlflowClient, model_id: str) -> dict[str, float]:
    return {m.key: m.value for m in client.get_logged_model(model_id).metrics}


def test_logs_registers_and_round_trips_both_ebms(client):
    latent, text = _models()
    latent_ds = MlflowEBMDataset(name="latent_ebm", registered_model_name="impetus-latent-ebm")
    text_ds = MlflowEBMDataset(name="text_ebm", registered_model_name="impetus-text-ebm")
    with mlflow.start_run() as run:
        for key, value in UNRELATED.items():  # earlier stages' metrics, as kedro-mlflow logs them
            client.log_metric(run.info.run_id, key, value, step=0)
        latent_ds.save({"model": latent, "metrics": LATENT_METRICS})
        text_ds.save({"model": text, "metrics": TEXT_METRICS})
        client.log_metric(run.info.run_id, "report/later", 1.0, step=0)  # a later stage ...
        mlflow.log_metric("report/fluent", 2.0)  # ... or fluent logging at step 0

    # Registry: one version each, pointing at the logged model.
    for ds, reg in ((latent_ds, "impetus-latent-ebm"), (text_ds, "impetus-text-ebm")):
        versions = client.search_model_versions(f"name = '{reg}'")
        assert [int(v.version) for v in versions] == [1]
        assert versions[0].source == ds.model_uri  # models:/<model_id> of the logged model
        assert versions[0].run_id == run.info.run_id

    # Each logged model has exactly its own best-epoch metrics, none of the run's.
    latent_id, text_id = (ds.model_uri.removeprefix("models:/") for ds in (latent_ds, text_ds))
    assert _metrics_of(client, latent_id) == pytest.approx(LATENT_METRICS)
    assert _metrics_of(client, text_id) == pytest.approx(TEXT_METRICS)
    assert client.get_logged_model(latent_id).params["input_dim"] == "8"
    assert client.get_logged_model(latent_id).source_run_id == run.info.run_id
    finished = client.get_run(run.info.run_id)
    assert {o.model_id for o in finished.outputs.model_outputs} == {latent_id, text_id}
    assert not finished.inputs.model_inputs
    assert finished.data.metrics["report/fluent"] == 2.0

    # Safe format: a torch.export archive, no pickled module.
    assert latent_ds.serialization_format == "pt2"
    assert client.get_logged_model(latent_id).tags[FORMAT_TAG] == "pt2"
    files = {f.path for f in client.list_logged_model_artifacts(latent_id, "data")}
    assert files == {"data/model.pt2"}
    assert text_ds.serialization_format == "pt2"  # TransformerEncoder exports under torch 2.13

    # Round trip: same energies, also for a batch size and length other than the example's.
    latent.eval(), text.eval()
    h = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    with torch.no_grad():
        assert torch.equal(latent_ds.load()(h), latent(h))
        assert torch.allclose(text_ds.load()(ids, mask), text(ids, mask), atol=1e-6)
        # A fresh dataset (a notebook) finds the newest registered version.
        fresh = MlflowEBMDataset(name="latent_ebm", registered_model_name="impetus-latent-ebm")
        assert torch.equal(fresh.load()(h), latent(h))


def test_an_ensemble_is_logged_as_one_pt2_model(client):
    """The learned energies are ensembles: torch.export traces all members, the params say how many."""
    from impetus.learned.ensemble import EnsembleEBM

    torch.manual_seed(3)
    members = [LatentEBM(LatentEBMConfig(input_dim=8, hidden=4, n_layers=1, dropout=0.0)) for _ in range(3)]
    ens = EnsembleEBM(members, mu=[0.1, -0.2, 0.3], sd=[1.0, 2.0, 0.5], out=(0.05, 0.8),
                      names=["seed0", "seed1", "fold0"], trained_on=[None, None, ["p1"]]).eval()
    ds = MlflowEBMDataset(name="latent_ebm", registered_model_name="impetus-latent-ebm")
    with mlflow.start_run():
        ds.save({"model": ens, "metrics": {"members": 3.0}})
    assert ds.serialization_format == "pt2"
    params = client.get_logged_model(ds.model_uri.removeprefix("models:/")).params
    assert (params["kind"], params["member_kind"], params["members"], params["input_dim"]) == ("EnsembleEBM", "LatentEBM", "3", "8")
    h = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ds.load()(h), ens(h), atol=1e-6)
    # a TextEBM ensemble: two inputs (ids, mask), as a single TextEBM takes them
    texts = [TextEBM(TextEBMConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16, dropout=0.0))
             for _ in range(2)]
    text_ens = EnsembleEBM(texts, mu=[0.0, 1.0], sd=[1.0, 3.0], names=["seed0", "seed1"]).eval()
    text_ds = MlflowEBMDataset(name="text_ebm", registered_model_name="impetus-text-ebm")
    with mlflow.start_run():
        text_ds.save({"model": text_ens})
    assert text_ds.serialization_format == "pt2"
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    with torch.no_grad():
        assert torch.allclose(text_ds.load()(ids, mask), text_ens(ids, mask), atol=1e-5)


def _break_export(monkeypatch) -> None:
    def broken_export(*args, **kwargs):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(torch.export, "export", broken_export)


def test_export_failure_refuses_pickle_and_names_the_parameter(client, monkeypatch):
    latent, _ = _models()
    _break_export(monkeypatch)
    ds = MlflowEBMDataset(name="latent_ebm", registered_model_name="impetus-latent-ebm")
    with mlflow.start_run():
        with pytest.raises(DatasetError, match=(
            r"latent_ebm: torch\.export failed \(RuntimeError: cannot trace this\)[\s\S]*"
            r"Set scorer\.allow_pickle=true"
        )):
            ds.save({"model": latent, "metrics": {"val_loss": 0.5}})
    assert ds.model_uri is None and client.search_registered_models() == []
    assert [m.status for m in client.search_logged_models([mlflow.get_experiment_by_name("impetus").experiment_id])
            ] == ["FAILED"]  # the attempt is marked failed, never left READY with no weights


def test_pickle_fallback_when_export_fails_and_pickle_is_allowed(client, monkeypatch, caplog):
    latent, _ = _models()
    _break_export(monkeypatch)
    ds = MlflowEBMDataset(name="latent_ebm", registered_model_name="impetus-latent-ebm")
    with mlflow.start_run(), caplog.at_level(logging.WARNING, logger="impetus.framework.mlflow_models"):
        ds.save({"model": latent, "metrics": {"val_loss": 0.5}, "allow_pickle": True})
    assert ds.serialization_format == "pickle"
    assert "torch.export failed (RuntimeError: cannot trace this)" in caplog.text
    model_id = ds.model_uri.removeprefix("models:/")
    assert client.get_logged_model(model_id).tags[FORMAT_TAG] == "pickle"
    assert _metrics_of(client, model_id) == {"val_loss": 0.5}


def test_no_active_run_warns_and_logs_nothing(client, caplog):
    latent, _ = _models()
    ds = MlflowEBMDataset(name="latent_ebm", registered_model_name="impetus-latent-ebm")
    with caplog.at_level(logging.WARNING, logger="impetus.framework.mlflow_models"):
        ds.save({"model": latent, "metrics": {"val_loss": 0.5}})
    assert "no active MLflow run" in caplog.text
    assert mlflow.active_run() is None
    assert client.search_registered_models() == []
    with pytest.raises(DatasetError, match="nothing logged yet"):
        ds.load()

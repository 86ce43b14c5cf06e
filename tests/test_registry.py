"""expo.registry against a real `mlflow server` and the embedded SQLite store: registration with lineage
tags, idempotency, aliases, the promotion gate (moving and not moving), races, manual promotion, loading
a model back by alias, and the message when the server is down."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from mlflow import MlflowClient

from expo import registry as R
from expo import tracking as T
from expo.artifacts import fingerprint
from expo.config import RegisterConfig, TrackingConfig
from expo.errors import ModelError, TrackingError

pytestmark = pytest.mark.usefixtures("no_tracking_env")
GATE = "hardest_level_pass@1"


def _run_id(uri: str, experiment: str) -> str:
    """A finished stage run to hang registrations on."""
    cfg = TrackingConfig(tracking_uri=uri, experiment=experiment)
    with T.stage_run(T.pipeline_key({"exp": experiment}), "register", cfg) as run:
        pass
    return run.run_id


def _register(uri, make_model_dir, name, seed, value, run_id, **tags):
    return R.log_and_register(make_model_dir(seed), name, RegisterConfig(), {"expo.arm": "exp-grpo", **tags},
                              {GATE: value, "pass@1": value / 2}, run_id,
                              tracking=TrackingConfig(tracking_uri=uri))


def _champion(uri: str, name: str) -> int | None:
    aliases = MlflowClient(uri).get_registered_model(name).aliases
    return int(aliases["champion"]) if "champion" in aliases else None


def test_register_is_idempotent_and_tags_lineage(mlflow_server, make_model_dir, unique_name):
    run_id = _run_id(mlflow_server, unique_name)
    first = _register(mlflow_server, make_model_dir, unique_name, 0, 0.5, run_id,
                      **{"expo.data.train_digest": "d1", "expo_beta": 0.04})
    again = _register(mlflow_server, make_model_dir, unique_name, 0, 0.9, run_id)
    assert (first.version, first.created) == (1, True)
    assert (again.version, again.created, again.aliases) == (1, False, ["candidate"])
    client = MlflowClient(mlflow_server)
    assert [int(v.version) for v in client.search_model_versions(f"name='{unique_name}'")] == [1]
    mv = client.get_model_version(unique_name, "1")
    assert mv.run_id == run_id and mv.tags["expo.source_run"] == run_id
    assert mv.tags[R.FINGERPRINT_TAG] == fingerprint(make_model_dir(0))
    assert mv.tags["expo.arm"] == "exp-grpo" and mv.tags["expo.base_model"] == "builtin:tiny"
    assert mv.tags["expo.data.train_digest"] == "d1" and mv.tags["expo_beta"] == "0.04"
    assert float(mv.tags["expo.metric.hardest_level_pass_at_1"]) == 0.5  # the second call changed nothing
    assert mv.tags["expo.metric.pass_at_1"] == "0.25"
    assert client.get_registered_model(unique_name).aliases == {"candidate": "1"}
    # A transformers-flavor MLflow model, registered from a LoggedModel of the run that carries the metrics.
    model_id = mv.tags["expo.model_id"]
    assert mv.source == f"models:/{model_id}"
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run_id
    assert {m.key: m.value for m in logged.metrics} == {"hardest_level_pass_at_1": 0.5, "pass_at_1": 0.25}
    import mlflow

    files = {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=f"{logged.artifact_location}/model",
                                                             tracking_uri=mlflow_server)}
    assert "model/model.safetensors" in files or any(f.endswith("model.safetensors") for f in files)
    everything = mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location,
                                                     tracking_uri=mlflow_server)
    from pathlib import Path

    names = {p.relative_to(everything).as_posix() for p in Path(everything).rglob("*") if p.is_file()}
    assert "MLmodel" in names and not any("checkpoints" in n for n in names)


def test_gate_moves_and_keeps_the_champion(mlflow_server, make_model_dir, unique_name):
    run_id = _run_id(mlflow_server, unique_name)
    cfg = RegisterConfig(gate_margin=0.05)
    track = TrackingConfig(tracking_uri=mlflow_server)
    v1 = _register(mlflow_server, make_model_dir, unique_name, 10, 0.30, run_id).version
    v2 = _register(mlflow_server, make_model_dir, unique_name, 11, 0.33, run_id).version  # +0.03 < margin
    v3 = _register(mlflow_server, make_model_dir, unique_name, 12, 0.40, run_id).version  # +0.10 > margin

    first = R.gate_and_promote(unique_name, v1, cfg, tracking=track)
    assert (first.decision, first.champion_version) == ("promoted", None)  # no champion yet
    kept = R.gate_and_promote(unique_name, v2, cfg, tracking=track)
    assert (kept.decision, kept.candidate_value, kept.champion_value) == ("kept", 0.33, 0.30)
    assert _champion(mlflow_server, unique_name) == v1
    tags = MlflowClient(mlflow_server).get_model_version(unique_name, str(v2)).tags
    assert tags["expo.gate.decision"] == "kept" and tags["expo.gate.champion_version"] == str(v1)
    assert float(tags["expo.gate.candidate_value"]) == 0.33 and float(tags["expo.gate.champion_value"]) == 0.30
    moved = R.gate_and_promote(unique_name, v3, cfg, tracking=track)
    assert moved.decision == "promoted" and _champion(mlflow_server, unique_name) == v3
    assert MlflowClient(mlflow_server).get_registered_model(unique_name).aliases["candidate"] == str(v3)


def test_racing_gates_leave_the_best_champion(mlflow_server, make_model_dir, unique_name):
    """Two gates read the same old champion at once; the alias must end on the better candidate."""
    run_id = _run_id(mlflow_server, unique_name)
    track = TrackingConfig(tracking_uri=mlflow_server)
    old = _register(mlflow_server, make_model_dir, unique_name, 20, 0.2, run_id).version
    R.promote(unique_name, old, reason="baseline", tracking=track)
    good = _register(mlflow_server, make_model_dir, unique_name, 21, 0.5, run_id).version
    best = _register(mlflow_server, make_model_dir, unique_name, 22, 0.7, run_id).version
    for _ in range(3):  # several rounds: the interleaving differs from round to round
        R.promote(unique_name, old, reason="reset", tracking=track)
        barrier = threading.Barrier(2)
        results: dict[int, R.GateDecision] = {}

        def gate(version: int, barrier=barrier, results=results) -> None:
            barrier.wait()
            results[version] = R.gate_and_promote(unique_name, version, RegisterConfig(), tracking=track)

        threads = [threading.Thread(target=gate, args=(v,)) for v in (good, best)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)  # registration loads the model now: slow on a loaded machine
        assert _champion(mlflow_server, unique_name) == best
        assert results[best].decision == "promoted"
        # Serialised by the registry lock: `good` either went first (promoted, then beaten) or second (kept).
        assert results[good].decision in ("promoted", "kept")
        if results[good].decision == "kept":
            assert results[good].champion_version == best


def test_racing_registrations_of_one_model_make_one_version(mlflow_server, make_model_dir, unique_name):
    run_id = _run_id(mlflow_server, unique_name)
    barrier = threading.Barrier(3)
    infos: list[R.VersionInfo] = []

    def register() -> None:
        barrier.wait()
        infos.append(_register(mlflow_server, make_model_dir, unique_name, 30, 0.1, run_id))

    threads = [threading.Thread(target=register) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(infos) == 3 and {i.version for i in infos} == {1}
    client = MlflowClient(mlflow_server)
    assert [int(v.version) for v in client.search_model_versions(f"name='{unique_name}'")] == [1]
    assert client.get_registered_model(unique_name).aliases == {"candidate": "1"}
    assert not client.search_registered_models(f"name = '{unique_name}{R.LOCK_SUFFIX}'")  # lock released


def test_manual_promote_records_who_and_why(mlflow_server, make_model_dir, unique_name):
    run_id = _run_id(mlflow_server, unique_name)
    track = TrackingConfig(tracking_uri=mlflow_server)
    v1 = _register(mlflow_server, make_model_dir, unique_name, 40, 0.9, run_id).version
    v2 = _register(mlflow_server, make_model_dir, unique_name, 41, 0.1, run_id).version
    assert R.promote(unique_name, v1, tracking=track, user="alice") is None
    assert R.promote(unique_name, v2, reason="A/B on level 5", user="bob", tracking=track) == v1
    tags = MlflowClient(mlflow_server).get_model_version(unique_name, str(v2)).tags
    assert tags["expo.promoted.champion.by"] == "bob"
    assert tags["expo.promoted.champion.reason"] == "A/B on level 5"
    assert tags["expo.promoted.champion.from_version"] == str(v1)
    assert time.strptime(tags["expo.promoted.champion.at"], "%Y-%m-%dT%H:%M:%SZ")
    assert _champion(mlflow_server, unique_name) == v2
    rows = R.list_models(unique_name, tracking=track)
    assert [(r["version"], r["aliases"]) for r in rows] == [(v2, ["candidate", "champion"]), (v1, [])]
    assert rows[1]["hardest_level_pass_at_1"] == 0.9 and rows[0]["arm"] == "exp-grpo"
    history = R.promotion_history(unique_name, tracking=track)  # newest first
    assert [(e["version"], e["from_version"], e["by"], e["reason"]) for e in history] == [
        (v2, v1, "bob", "A/B on level 5"), (v1, None, "alice", "")]
    with pytest.raises(TrackingError, match="no version 99"):
        R.promote(unique_name, 99, tracking=track)
    with pytest.raises(TrackingError, match="no registered model"):
        R.list_models(unique_name + "-missing", tracking=track)


def test_champion_loads_back_and_generates(mlflow_server, make_model_dir, unique_name, tmp_path):
    run_id = _run_id(mlflow_server, unique_name)
    track = TrackingConfig(tracking_uri=mlflow_server)
    version = _register(mlflow_server, make_model_dir, unique_name, 50, 0.4, run_id).version
    R.gate_and_promote(unique_name, version, RegisterConfig(), tracking=track)
    model, tok = R.load_model_from_registry(f"models:/{unique_name}@champion", tracking=track, dst=tmp_path)
    batch = tok(["1+1="], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 6)  # (B, prompt + new): stops at no eos
    assert isinstance(tok.decode(out[0, batch["input_ids"].shape[1]:]), str)
    # The loaded weights are the registered ones: same logits as the folder that was registered.
    from transformers import AutoModelForCausalLM

    local = AutoModelForCausalLM.from_pretrained(make_model_dir(50))
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, local(**batch).logits)
    assert (R.download_model(f"models:/{unique_name}/{version}", tmp_path / "v", tracking=track) / "config.json").is_file()
    with pytest.raises(TrackingError, match="not a registry URI"):
        R.download_model("runs:/abc/model", tmp_path)


def test_registry_on_embedded_sqlite(sqlite_store, make_model_dir, tmp_path):
    run_id = _run_id(sqlite_store, "embedded")
    track = TrackingConfig(tracking_uri=sqlite_store)
    v1 = _register(sqlite_store, make_model_dir, "expo-tiny", 60, 0.3, run_id)
    assert _register(sqlite_store, make_model_dir, "expo-tiny", 60, 0.3, run_id).version == v1.version == 1
    v2 = _register(sqlite_store, make_model_dir, "expo-tiny", 61, 0.1, run_id).version
    assert R.gate_and_promote("expo-tiny", 1, RegisterConfig(), tracking=track).decision == "promoted"
    assert R.gate_and_promote("expo-tiny", v2, RegisterConfig(), tracking=track).decision == "kept"
    assert _champion(sqlite_store, "expo-tiny") == 1
    folder = R.download_model("models:/expo-tiny@champion", tmp_path / "dl", tracking=track)
    assert (folder / "model.safetensors").is_file()
    # Artifacts of the embedded store live beside the database, not in the working directory.
    assert (T.sqlite_path(sqlite_store).parent / "mlartifacts").is_dir()


def test_unreachable_server_says_how_to_register_later(make_model_dir, unique_name):
    from tests.mlflow_server import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as err:
        R.log_and_register(make_model_dir(70), unique_name, RegisterConfig(), {}, {}, "run-x",
                           tracking=TrackingConfig(tracking_uri=uri, retries=1, backoff_s=0.01))
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert uri in message and f"stays at {make_model_dir(70)}" in message
    assert f"register_dir('{make_model_dir(70)}', '{unique_name}')" in message and "\n" not in message


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        R.log_and_register(tmp_path, "m", RegisterConfig(), {}, {}, "run-x")


def test_lora_adapter_registers_with_its_base_and_loads(sqlite_store, make_model_dir, tmp_path):
    """A LoRA adapter folder is registered with its base model as a tag and loads onto that base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from expo.modeling import load_tokenizer

    base_dir = make_model_dir(90)
    base = AutoModelForCausalLM.from_pretrained(base_dir)  # name_or_path = base_dir, saved in the adapter
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    load_tokenizer(base_dir).save_pretrained(adapter)
    run_id = _run_id(sqlite_store, "lora")
    track = TrackingConfig(tracking_uri=sqlite_store)
    info = R.log_and_register(adapter, "expo-lora", RegisterConfig(), {}, {GATE: 0.1}, run_id, tracking=track)
    tags = MlflowClient(sqlite_store).get_model_version("expo-lora", str(info.version)).tags
    assert tags["expo.adapter"] == "lora" and tags["expo.base_model"] == str(base_dir)
    model, tok = R.load_model_from_registry("models:/expo-lora@candidate", tracking=track, dst=tmp_path / "dl")
    batch = tok(["2+2="], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, peft_model(**batch).logits, atol=1e-6)

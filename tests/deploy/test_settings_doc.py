"""The configuration reference covers every settings field and the env-name check rejects typos."""

from __future__ import annotations

from deploy_helpers import DEPLOY

from linewatch.alerts.settings import AlertsSettings
from linewatch.deploy.cli import main
from linewatch.deploy.settings_doc import COMMAND_SETTINGS, env_fields, is_known, render_markdown, settings_classes
from linewatch.detector.service.settings import DetectorSettings
from linewatch.health.settings import HealthSettings
from linewatch.ingest.settings import CameraSettings
from linewatch.plant.settings import VerdictsSettings


def test_env_fields_walk_nested_models() -> None:
    names = {f.name: f for f in env_fields(DetectorSettings)}
    assert "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS" in names and "LINEWATCH_REDIS__PASSWORD" in names
    assert names["LINEWATCH_MAX_BATCH_SIZE"].default == "16"
    assert "LINEWATCH_KAFKA" not in names  # nested models are expanded, not listed as leaves
    alerts = {f.name: f for f in env_fields(AlertsSettings)}
    assert alerts["LINEWATCH_API_TOKEN"].default == "(required)"
    assert alerts["LINEWATCH_RULES__DEFAULT__K"].default == "3"
    assert alerts["LINEWATCH_RULES__LINES"].is_mapping


def test_is_known_accepts_fields_and_rejects_typos() -> None:
    assert is_known(DetectorSettings, "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS")
    assert is_known(DetectorSettings, "LINEWATCH_KAFKA")  # a whole nested model as JSON
    assert is_known(AlertsSettings, "LINEWATCH_RULES__LINES__LINE2__K")  # a key below a dict field
    assert not is_known(DetectorSettings, "LINEWATCH_KAFKA__BOOTSTRAP_SERVER")
    assert not is_known(CameraSettings, "LINEWATCH_REDIS__URL")  # cameras have no Redis
    assert not is_known(DetectorSettings, "LINEWATCH_API_TOKEN")


def test_reference_lists_every_variable_and_the_committed_copy_is_current(capsys) -> None:  # type: ignore[no-untyped-def]
    text = render_markdown()
    for cls in (CameraSettings, DetectorSettings, AlertsSettings, VerdictsSettings, HealthSettings):
        assert all(f"`{field.name}`" in text for field in env_fields(cls))
    assert main(["config-doc"]) == 0
    assert capsys.readouterr().out.strip() == text.strip()
    committed = (DEPLOY / "CONFIGURATION.md").read_text()
    assert committed.strip() == text.strip(), (
        "deploy/CONFIGURATION.md is out of date: run `linewatch config-doc --output deploy/CONFIGURATION.md`")


def test_verdicts_and_camera_health_are_documented_under_their_commands() -> None:
    classes = settings_classes()
    assert classes[COMMAND_SETTINGS["verdicts"]] is VerdictsSettings
    assert classes[COMMAND_SETTINGS["camera-health"]] is HealthSettings
    verdicts = {f.name: f for f in env_fields(VerdictsSettings)}
    assert verdicts["LINEWATCH_METRICS_PORT"].default == "9110"
    assert verdicts["LINEWATCH_MQTT__PASSWORD"].default == "None"
    assert verdicts["LINEWATCH_DEADLINES__CAMERAS"].is_mapping
    assert is_known(VerdictsSettings, "LINEWATCH_OPCUA__PLC_NODES__CAM_7")  # a camera's nodes, as JSON
    assert not is_known(VerdictsSettings, "LINEWATCH_REDIS__URL")  # verdicts never touch Redis
    health = {f.name: f for f in env_fields(HealthSettings)}
    assert health["LINEWATCH_METRICS_PORT"].default == "9111"
    assert health["LINEWATCH_CHECKS__DEFAULT__FOCUS_RATIO"].default == "0.25"
    text = render_markdown()
    assert "## verdicts (" in text and "Read by: `linewatch verdicts`." in text
    assert "## camera-health (" in text and "Read by: `linewatch camera-health`." in text

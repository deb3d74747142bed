"""``connect`` reads Temporal's settings as ``temporalio.envconfig`` does, except that a
``TEMPORAL_*`` variable set to the empty string counts as unset: compose files pass
``${TEMPORAL_TLS:-}``, ``${TEMPORAL_API_KEY:-}`` and the certificate paths through to every
DEE service, and an empty one must not turn TLS on or read the working folder as a
certificate."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.envconfig import ClientConfig
from temporalio.testing import WorkflowEnvironment

from dee.runs.temporal import connect, temporal_environment

#: Every client setting a compose file passes through, as it passes them when unset.
EMPTY = {
    "TEMPORAL_API_KEY": "",
    "TEMPORAL_TLS": "",
    "TEMPORAL_TLS_CLIENT_CERT_PATH": "",
    "TEMPORAL_TLS_CLIENT_KEY_PATH": "",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH": "",
    "TEMPORAL_TLS_SERVER_NAME": "",
    "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION": "",
}


def test_envconfig_alone_would_take_empty_values_as_settings(tmp_path: Path) -> None:
    # Why the filter exists: without it, these fail or turn TLS on.
    base = {"TEMPORAL_ADDRESS": "temporal:7233", "TEMPORAL_CONFIG_FILE": str(tmp_path / "no")}
    with pytest.raises(IsADirectoryError):
        ClientConfig.load_client_connect_config(override_env_vars={**base, **EMPTY})
    api_key_only = ClientConfig.load_client_connect_config(
        override_env_vars={**base, "TEMPORAL_API_KEY": ""}
    )
    assert api_key_only.get("tls") is True
    filtered = ClientConfig.load_client_connect_config(
        override_env_vars=temporal_environment({**base, **EMPTY, "OTHER": ""})
    )
    assert filtered == {"target_host": "temporal:7233"}


def test_only_empty_temporal_variables_are_left_out() -> None:
    env = {**EMPTY, "TEMPORAL_ADDRESS": "temporal:7233", "TEMPORAL_TLS": "true", "OTHER": ""}
    assert temporal_environment(env) == {
        "TEMPORAL_ADDRESS": "temporal:7233",
        "TEMPORAL_TLS": "true",
        "OTHER": "",
    }


async def test_connect_with_the_compose_files_empty_values(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", dev_env.client.namespace)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "no-temporal-profiles.toml"))
    for name, value in EMPTY.items():
        monkeypatch.setenv(name, value)
    client = await connect()
    # A plain-text call goes through: TLS stayed off.
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert info.server_version
    assert client.namespace == dev_env.client.namespace

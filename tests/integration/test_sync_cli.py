"""`wbc-counter sync` as a command: config vs flags, token file checks, the JSON
summary, the lock, and ``--loop`` stopped by SIGTERM as systemd does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from edge_app.store.db import Store  # noqa: E402
from edge_app.sync.lock import SyncLock  # noqa: E402
from tests.sync_fixtures import (  # noqa: E402
    IDENT_SYSTEM,
    ROOT,
    finalised_session,
    outbox_rows,
    run_cli,
    running_fhir_server,
    summary_line,
    write_config,
    write_token,
)


@pytest.fixture
def fhir_server(tmp_path):
    yield from running_fhir_server(tmp_path)


def test_sync_without_flags_uses_the_fhir_config_section(tmp_path, capsys, fhir_server):
    store = Store(tmp_path / "data")
    _, rid = finalised_session(store)
    token = write_token(tmp_path / "token")
    cfg = write_config(tmp_path / "config.toml",
                       f'[fhir]\nurl = "{fhir_server.url}"\ntoken_file = "{token}"\n'
                       f'identifier_system = "urn:example:kiosk-results"\n')
    rc, out, err = run_cli(["sync", "--data-dir", tmp_path / "data", "--config", cfg], capsys)
    assert rc == 0, err
    assert json.loads(out) == {"delivered": 1, "pending": 0, "failed": 0}  # exactly one line of JSON
    assert len(fhir_server.search("DiagnosticReport", identifier=f"urn:example:kiosk-results|{rid}")) == 1
    assert fhir_server.search("DiagnosticReport", identifier=f"{IDENT_SYSTEM}|{rid}") == []


def test_nothing_to_do_without_config_is_success(tmp_path, capsys):
    rc, out, err = run_cli(["sync", "--data-dir", tmp_path / "data"], capsys)
    assert rc == 0 and json.loads(out) == {"delivered": 0, "pending": 0, "failed": 0}


def test_results_waiting_for_an_unconfigured_fhir_server_say_what_to_set(tmp_path, capsys):
    store = Store(tmp_path / "data")
    finalised_session(store)
    rc, out, err = run_cli(["sync", "--data-dir", tmp_path / "data"], capsys)
    assert rc == 1 and summary_line(out) == {"delivered": 0, "pending": 1, "failed": 0}
    assert "1 result(s) wait for 'fhir'" in err and "--fhir URL" in err
    assert outbox_rows(store)[0]["attempts"] == 0


@pytest.mark.parametrize("content, mode, words", [
    (None, 0o600, "does not exist"),
    ("abc", 0o644, "chmod 600"),
    ("", 0o600, "is empty"),
    ("Bearer abc", 0o600, "malformed"),
    ('{"access_token": "a b"}', 0o600, "malformed"),
    ("tok\u00e9n", 0o600, "not plain ASCII"),
])
def test_bad_token_file_is_one_clear_line_and_loses_nothing(tmp_path, capsys, content, mode, words):
    store = Store(tmp_path / "data")
    finalised_session(store)
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content, encoding="utf-8")
        token.chmod(mode)
    rc, out, err = run_cli(["sync", "--data-dir", tmp_path / "data", "--fhir", "http://127.0.0.1:9/fhir",
                            "--token-file", token], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    row = outbox_rows(store)[0]
    assert row["status"] == "pending" and row["attempts"] == 0


@pytest.mark.parametrize("url", ["ftp://example.org/fhir", "not a url", "http://host/fhir?x=1"])
def test_bad_fhir_url_is_a_config_error(tmp_path, capsys, url):
    rc, _, err = run_cli(["sync", "--data-dir", tmp_path / "data", "--fhir", url], capsys)
    assert rc == 2 and "FHIR base URL" in err


def test_a_second_sync_while_one_runs_does_nothing(tmp_path, capsys):
    store = Store(tmp_path / "data")
    finalised_session(store)
    held = SyncLock(tmp_path / "data")
    assert held.acquire()
    try:
        rc, out, err = run_cli(["sync", "--data-dir", tmp_path / "data", "--fhir", "http://127.0.0.1:9/fhir"],
                               capsys)
    finally:
        held.release()
    assert rc == 0 and "another sync" in err
    assert summary_line(out) == {"delivered": 0, "pending": 1, "failed": 0}
    assert outbox_rows(store)[0]["attempts"] == 0


@pytest.mark.slow
def test_loop_delivers_new_results_and_stops_on_sigterm(tmp_path, fhir_server):
    store = Store(tmp_path / "data")
    finalised_session(store, sample_id="S-1")
    token = write_token(tmp_path / "token")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_app.cli", "sync", "--loop", "--interval", "0.2", "--data-dir",
         str(tmp_path / "data"), "--fhir", fhir_server.url, "--token-file", str(token)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        fhir_server.wait_event("stored")
        _, rid2 = finalised_session(store, sample_id="S-2")  # finalised while the daemon runs
        fhir_server.wait_event("stored")
        deadline = time.monotonic() + 30
        while outbox_rows(store)[-1]["status"] != "done" and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert sum(s["delivered"] for s in lines) == 2 and lines[-1]["pending"] == 0
    assert len(fhir_server.search("DiagnosticReport", identifier=f"{IDENT_SYSTEM}|{rid2}")) == 1

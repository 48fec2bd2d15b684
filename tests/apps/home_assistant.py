"""Home Assistant for the real-app tests: where tests/apps/setup_home_assistant.sh installs
it, the configuration the tests and that script's first start use, and HA's REST API
(onboarding, states) called with curl from inside a test's network namespace.

Stdlib only: the setup script imports `configuration` with HA's own Python 3.13.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tests.support.procs import ROOT

logger = logging.getLogger(__name__)

VERSION = "2025.4.4"
HOME = ROOT / ".apps" / "home-assistant"
SETUP = "tests/apps/setup_home_assistant.sh"
MARKER = HOME / f"installed-{VERSION}"
"""Written by the setup script once HA and its integrations' requirements are in the venv."""
HASS = HOME / "venv" / "bin" / "hass"
ENTITY = "input_boolean.porch_light"
ENTITY_NAME = "Porch light"


def missing_install() -> str | None:
    """Why the installed Home Assistant cannot be used, or None."""
    if not MARKER.exists() or not HASS.exists():
        return f"Home Assistant {VERSION} is not installed in {HOME}: run `bash {SETUP}`"
    return None


def configuration(port: int) -> str:
    """configuration.yaml: the smallest one with the frontend (which brings auth, onboarding,
    the REST and WebSocket APIs and the default dashboard) and one entity to switch.
    `default_config:` is left out: it loads ~20 more integrations (bluetooth, cloud, ...)."""
    return f"""\
# Written by tests/apps/home_assistant.py.
logger:
  default: info
http:
  server_host: 127.0.0.1
  server_port: {port}
frontend:
input_boolean:
  porch_light:
    name: {ENTITY_NAME}
"""


def write_config(config_dir: Path, port: int) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(configuration(port))
    return config_dir


def hass_argv(config_dir: Path) -> list[str]:
    """The command line of HA in the foreground (its log also goes to stdout)."""
    return [str(HASS), "--config", str(config_dir), "--skip-pip"]


class RestClient:
    """HA's HTTP API at `base` (http://127.0.0.1:PORT), through `run` (e.g. world.ns_run):
    curl runs where HA's loopback is; pytest itself never enters the namespace."""

    def __init__(self, run: Callable[..., str], base: str) -> None:
        self._run = run
        self.base = base
        self.token: str | None = None

    def call(self, method: str, path: str, *, body: Any = None,
             form: dict[str, str] | None = None) -> tuple[int, Any]:
        """`(status, JSON body or text)`; `body` goes as JSON, `form` as urlencoded."""
        argv = ["curl", "-sS", "-m", "20", "-X", method, "-w", "\n%{http_code}"]
        if self.token:
            argv += ["-H", f"Authorization: Bearer {self.token}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        elif form is not None:
            argv += ["-H", "Content-Type: application/x-www-form-urlencoded",
                     "--data-binary", urlencode(form)]
        out = self._run(*argv, self.base + path)
        text, _, status = out.rpartition("\n")
        try:
            return int(status), json.loads(text)
        except ValueError:
            return int(status), text

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until HA's HTTP server answers (it starts once the frontend is set up)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.call("GET", "/api/onboarding")[0] == 200:
                    return
            except RuntimeError:  # curl: connection refused
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Home Assistant did not answer at {self.base} in {timeout} s")
            time.sleep(0.5)

    def onboard(self, name: str, username: str, password: str) -> None:
        """Every onboarding step, as the onboarding page does them; keeps the owner's
        access token in `token`."""
        client_id = self.base + "/"
        status, user = self.call("POST", "/api/onboarding/users", body={
            "client_id": client_id, "name": name, "username": username,
            "password": password, "language": "en"})
        assert status == 200, (status, user)
        status, tokens = self.call("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": user["auth_code"],
            "client_id": client_id})
        assert status == 200, (status, tokens)
        self.token = tokens["access_token"]
        for step, body in (("core_config", {}), ("analytics", {}),
                           ("integration", {"client_id": client_id,
                                            "redirect_uri": client_id + "?auth_callback=1"})):
            status, answer = self.call("POST", f"/api/onboarding/{step}", body=body)
            assert status == 200, (step, status, answer)
        status, steps = self.call("GET", "/api/onboarding")
        assert status == 200 and all(s["done"] for s in steps), steps
        logger.info("onboarded %s at %s", username, self.base)

    def state(self, entity: str) -> str:
        status, answer = self.call("GET", f"/api/states/{entity}")
        assert status == 200, (status, answer)
        return str(answer["state"])

    def wait_state(self, entity: str, expected: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status, answer = self.call("GET", f"/api/states/{entity}")
            if status == 200 and answer["state"] == expected:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{entity} is not {expected!r} after {timeout} s: "
                                     f"{status} {answer}")
            time.sleep(0.3)

    def set_state(self, entity: str, on: bool) -> None:
        """Switch an input_boolean with its service (as an automation or another user would)."""
        domain = entity.split(".")[0]
        service = "turn_on" if on else "turn_off"
        status, answer = self.call("POST", f"/api/services/{domain}/{service}",
                                   body={"entity_id": entity})
        assert status == 200, (status, answer)

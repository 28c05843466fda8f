"""docs/deploy.md and docs/examples/compose.yaml say the same as the Quadlet units and musegate's settings."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from musegate.config import FIELD_BY_NAME
from tests.test_quadlets import QUADLETS, minimum_podman, parse_unit

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy.md"
COMPOSE = ROOT / "docs" / "examples" / "compose.yaml"
CONTRACT_IMAGE = "ghcr.io/musegate/musegate:latest"


def setting(variable: str) -> str:
    return variable[len("MUSEGATE_") :].lower()


@pytest.fixture(scope="module")
def deploy() -> str:
    return DEPLOY.read_text(encoding="utf-8")


def dot_env(deploy: str) -> dict[str, str]:
    """The .env file the guide tells Docker Compose users to write."""
    block = re.search(r"create a file `.env`:\n\n```sh\n(.*?)```", deploy, re.S)
    assert block, "the guide shows no .env file"
    return dict(line.partition("=")[::2] for line in block.group(1).splitlines() if line)


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} in every string of the file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(
                f"{name} is required but the .env of the guide does not set it: {arg}"
            )
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose(raw_compose, deploy) -> dict:
    return interpolate(raw_compose, dot_env(deploy))


def test_compose_has_navidrome_and_musegate(compose):
    assert set(compose["services"]) == {"navidrome", "musegate"}
    assert compose["services"]["navidrome"]["image"] == "docker.io/deluan/navidrome:latest"
    musegate = compose["services"]["musegate"]
    assert musegate["image"] == CONTRACT_IMAGE
    assert musegate["depends_on"] == ["navidrome"]
    port = FIELD_BY_NAME["port"].default()
    assert musegate["ports"] == [f"{port}:{port}"]
    # Navidrome is reached only through musegate.
    assert "ports" not in compose["services"]["navidrome"]


def test_compose_builds_from_the_checkout_it_sits_in(compose):
    build = compose["services"]["musegate"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert build["dockerfile"] == "podman/Containerfile"


def test_compose_healthcheck_is_musegate_health(compose):
    check = compose["services"]["musegate"]["healthcheck"]
    assert check["test"] == ["CMD", "musegate", "health"]
    for key in ("interval", "timeout", "start_period"):
        assert re.fullmatch(r"\d+(ms|s|m|h)", check[key]), (key, check[key])
    assert isinstance(check["retries"], int) and check["retries"] >= 1


def test_compose_volumes(compose):
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        mounts = {v.split(":")[1]: v.split(":") for v in service["volumes"]}
        assert mounts["/data"][0] in declared, f"{name}: /data is not a named volume"
        assert mounts["/data"][2:] == [], f"{name}: /data must be writable"
        assert mounts["/music"][2:] == ["ro"], f"{name}: the music must be mounted :ro"
    # Both read the same folder, so the path map is the identity.
    sources = {
        v.split(":")[0]
        for service in compose["services"].values()
        for v in service["volumes"]
        if v.split(":")[1] == "/music"
    }
    assert sources == {dot_env(DEPLOY.read_text(encoding="utf-8"))["MUSIC_DIR"]}


def test_compose_environment_is_real_settings(compose, raw_compose):
    env = compose["services"]["musegate"]["environment"]
    assert env and all(name.startswith("MUSEGATE_") for name in env)
    for name in env:
        assert setting(name) in FIELD_BY_NAME, f"{name} is not a musegate setting"
    host = re.fullmatch(r"http://([\w.-]+):4533", env["MUSEGATE_UPSTREAM_URL"]).group(1)
    assert host in compose["services"]
    assert env["MUSEGATE_SOURCE"] == "subsonic"
    assert env["MUSEGATE_PATH_MAP"] == "/music=/music"
    # Secrets come from .env, never written into the file.
    for name, value in raw_compose["services"]["musegate"]["environment"].items():
        if FIELD_BY_NAME[setting(name)].secret:
            assert re.fullmatch(r"\$\{" + name + r":\?[^}]+\}", value), (
                f"{name} is written in the file"
            )


def test_interpolation_needs_the_required_variables(raw_compose, deploy):
    env = dot_env(deploy)
    assert interpolate("${MUSEGATE_SCAN_CRON:-0 3 * * *}", env) == "0 3 * * *"
    del env["MUSIC_DIR"]
    with pytest.raises(AssertionError, match="MUSIC_DIR is required"):
        interpolate(raw_compose, env)


def test_every_variable_in_the_guide_is_a_setting(deploy):
    names = set(re.findall(r"MUSEGATE_([A-Z_]+[A-Z])", deploy))
    assert "UPSTREAM_URL" in names
    unknown = {
        n for n in names if n.lower() not in FIELD_BY_NAME
    }
    assert not unknown, f"not musegate settings: {sorted(unknown)}"


def test_links_in_the_guide_resolve(deploy):
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", deploy)
    local = [t for t in targets if not re.match(r"\w+://", t)]
    assert "examples/compose.yaml" in local and "configuration.md" in local
    for target in local:
        assert (DEPLOY.parent / target).exists(), f"{target} does not exist"


def test_guide_has_the_promised_sections(deploy):
    headings = re.findall(r"^#+ (.+)$", deploy, re.M)
    for heading in (
        "Build the image",
        "Rootless Podman with Quadlet (systemd)",
        "Plain `podman run`",
        "Docker Compose",
        "Configuration by environment variables",
        "Pointing apps at musegate",
        "Behind a reverse proxy",
        "Health, readiness and metrics",
    ):
        assert heading in headings


def test_guide_names_the_podman_version_the_units_need(deploy):
    needed = minimum_podman(parse_unit(QUADLETS / "musegate.container"))
    assert f"`musegate.container` needs Podman {needed} or later" in deploy
    assert "On Podman 4.6 to 4.9" in deploy


def _musegate_run_command(deploy: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", deploy, re.S)
    commands = [c for b in blocks for c in b.replace("\\\n", " ").splitlines()]
    runs = [
        shlex.split(c) for c in commands if c.startswith("podman run") and "--name musegate" in c
    ]
    assert len(runs) == 1
    return runs[0]


def _options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_podman_run_matches_the_quadlet_unit(deploy):
    argv = _musegate_run_command(deploy)
    unit = parse_unit(QUADLETS / "musegate.container")
    env = dict(e.partition("=")[::2] for e in _options(argv, "-e"))
    unit_env = dict(e.partition("=")[::2] for e in unit.values("Container", "Environment"))
    for name in env:
        assert setting(name) in FIELD_BY_NAME
    assert env["MUSEGATE_SOURCE"] == unit_env["MUSEGATE_SOURCE"]
    assert env["MUSEGATE_PATH_MAP"] == unit_env["MUSEGATE_PATH_MAP"]
    # Here the container is called navidrome, not systemd-navidrome.
    assert env["MUSEGATE_UPSTREAM_URL"] == "http://navidrome:4533"
    assert _options(argv, "--secret") == unit.values("Container", "Secret")
    assert _options(argv, "--health-cmd") == [unit.value("Container", "HealthCmd")]
    assert _options(argv, "--stop-timeout") == [unit.value("Container", "StopTimeout")]
    assert _options(argv, "-p") == unit.values("Container", "PublishPort")
    mounts = {v.split(":")[1]: v.split(":") for v in _options(argv, "-v")}
    assert "ro" in mounts["/music"][2].split(",")
    assert argv[-1] == "localhost/musegate:latest"

"""The Podman Quadlet units in quadlets/ are valid for Podman and systemd, and agree with musegate.

Debian 12's Podman (4.3) has no Quadlet generator, so the units cannot be run
here. Instead each file is checked against the Quadlet key reference in
tests/quadlet_keys.py (Podman 5.0's podman-systemd.unit(5)); the sections
Quadlet hands to systemd are checked by systemd itself with
`systemd-analyze verify`, where that command exists.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from musegate.config import FIELD_BY_NAME
from tests.quadlet_keys import (
    INSTALL_KEYS,
    KEYS,
    MULTI_VALUED,
    PASSTHROUGH_SECTIONS,
    QUADLET_SECTION,
    VALUE_SINCE,
)

ROOT = Path(__file__).resolve().parent.parent
QUADLETS = ROOT / "quadlets"
UNIT_FILES = sorted(p for p in QUADLETS.iterdir() if p.suffix[1:] in QUADLET_SECTION)


SYSTEMD_BOOLEANS = {"1", "yes", "y", "true", "t", "on", "0", "no", "n", "false", "f", "off"}
VOLUME_OPTIONS = {
    "ro", "rw", "z", "Z", "U", "O", "copy", "nocopy", "dev", "nodev", "exec", "noexec",
    "suid", "nosuid", "bind", "rbind", "private", "rprivate", "shared", "rshared",
    "slave", "rslave", "unbindable", "runbindable", "idmap", "noatime",
}  # fmt: skip
SECRET_OPTIONS = {"type", "target", "uid", "gid", "mode"}
DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------- parsing


@dataclass
class Unit:
    path: Path
    # (section, key, value, line number), in file order; repeated keys kept
    entries: list[tuple[str, str, str, int]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.path.suffix[1:]

    def values(self, section: str, key: str) -> list[str]:
        return [v for s, k, v, _ in self.entries if s == section and k == key]

    def value(self, section: str, key: str) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else None


def parse_unit(path: Path) -> Unit:
    """Read a file in systemd's unit syntax (systemd.syntax(7)).

    Not configparser: a systemd key may be repeated (Volume=, Environment=) and
    each occurrence counts, and only a trailing backslash continues a line.
    """
    unit = Unit(path)
    section = None
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                unit.problems.append(f"{path.name}:{number}: bad section header {line!r}")
                continue
            section = line[1:-1]
            if section in unit.sections:
                unit.problems.append(f"{path.name}:{number}: section [{section}] given twice")
            unit.sections.append(section)
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key or not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            unit.problems.append(f"{path.name}:{number}: not a key=value line: {line!r}")
            continue
        if section is None:
            unit.problems.append(f"{path.name}:{number}: {key}= before any section")
            continue
        unit.entries.append((section, key, value.strip(), number))
    return unit


# ---------------------------------------------------------------- value forms


def _port_range(text: str) -> bool:
    low, _, high = text.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        return False
    ports = [int(low), int(high or low)]
    return all(1 <= p <= 65535 for p in ports) and ports[0] <= ports[1]


def check_publish_port(value: str) -> str | None:
    """`[ip:][hostPort:]containerPort[/proto]`, ip may be `[v6]`, hostPort may be empty after an ip."""
    spec, _, proto = value.partition("/")
    if proto and proto not in ("tcp", "udp", "sctp"):
        return f"unknown protocol {proto!r}"
    ip = None
    if spec.startswith("["):
        ip, close, spec = spec[1:].partition("]:")
        if not close or not re.fullmatch(r"[0-9A-Fa-f:.]+", ip):
            return "bad IPv6 address"
        parts = spec.split(":")
        if len(parts) == 1:
            parts = ["", parts[0]]
    else:
        parts = spec.split(":")
        if len(parts) == 3:
            ip, parts = parts[0], parts[1:]
            if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", ip) or any(
                int(o) > 255 for o in ip.split(".")
            ):
                return f"bad IPv4 address {ip!r}"
    if not 1 <= len(parts) <= 2:
        return "expected [ip:][hostPort:]containerPort"
    *host, container = parts
    if not _port_range(container):
        return f"bad container port {container!r}"
    if host and host[0] == "" and ip is None:
        return "an empty host port needs an ip before it"
    if host and host[0] and not _port_range(host[0]):
        return f"bad host port {host[0]!r}"
    return None


def check_volume(value: str) -> str | None:
    """`[source:]destination[:options]`; destination absolute, options from podman's -v list."""
    parts = value.split(":")
    if not 1 <= len(parts) <= 3 or any(not p for p in parts):
        return "expected source:destination[:options]"
    if len(parts) == 1:
        parts = ["", parts[0]]
    source, dest = parts[0], parts[1]
    if not dest.startswith("/"):
        return f"destination {dest!r} is not an absolute path"
    if source and not (
        source.startswith(("/", "%h", "%S", "%C", "%t", "%E")) or re.fullmatch(r"[\w.-]+", source)
    ):
        return f"source {source!r} is neither a path nor a volume name"
    if len(parts) == 3:
        options = parts[2].split(",")
        unknown = [o for o in options if o not in VOLUME_OPTIONS]
        if unknown:
            return f"unknown volume options {unknown}"
        if {"ro", "rw"} <= set(options) or {"z", "Z"} <= set(options):
            return f"contradictory volume options {options}"
    return None


def check_secret(value: str) -> str | None:
    name, *options = value.split(",")
    if not re.fullmatch(r"[\w.-]+", name):
        return f"bad secret name {name!r}"
    opts = {}
    for option in options:
        key, eq, val = option.partition("=")
        if not eq or key not in SECRET_OPTIONS or not val:
            return f"bad secret option {option!r}"
        opts[key] = val
    if opts.get("type", "mount") not in ("mount", "env"):
        return f"secret type must be mount or env, not {opts['type']!r}"
    if opts.get("type") == "env" and not ENV_NAME.fullmatch(opts.get("target", "")):
        return "a type=env secret needs target=VARIABLE"
    return None


def is_fully_qualified(image: str) -> bool:
    """A registry host (with a dot or a port, or `localhost`) first, and a tag or digest."""
    first, slash, rest = image.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return False
    return "@sha256:" in rest or ":" in rest.rsplit("/", 1)[-1]


def check_environment(value: str) -> str | None:
    try:
        words = shlex.split(value)
    except ValueError as exc:
        return str(exc)
    for word in words:
        name, eq, _ = word.partition("=")
        if not eq or not ENV_NAME.fullmatch(name):
            return f"{word!r} is not NAME=value"
    return None if words else "empty"


def environment_names(unit: Unit) -> list[str]:
    names = [
        w.partition("=")[0] for v in unit.values("Container", "Environment") for w in shlex.split(v)
    ]
    for secret in unit.values("Container", "Secret"):
        target = re.search(r"(?:^|,)target=([^,]+)", secret)
        if "type=env" in secret and target:
            names.append(target.group(1))
    return names


def check_value(section: str, key: str, value: str, unit: Unit) -> str | None:
    if section == "Container":
        if key == "Image":
            if value.endswith(".image"):
                return None
            if not is_fully_qualified(value):
                return (
                    f"image {value!r} is not fully qualified (registry/name:tag, or localhost/...)"
                )
        elif key == "AutoUpdate":
            if value not in ("registry", "local"):
                return "AutoUpdate must be registry or local"
            image = unit.value("Container", "Image") or ""
            if value == "registry" and image.startswith("localhost/"):
                return "AutoUpdate=registry needs an image from a registry, not localhost/"
        elif key == "Notify":
            if value.lower() not in SYSTEMD_BOOLEANS | {"healthy"}:
                return "Notify must be a boolean or healthy"
            if value == "healthy" and not unit.value("Container", "HealthCmd"):
                return "Notify=healthy needs HealthCmd="
        elif key == "PublishPort":
            return check_publish_port(value)
        elif key == "Volume":
            return check_volume(value)
        elif key == "Secret":
            return check_secret(value)
        elif key in ("HealthCmd", "EnvironmentFile", "Network", "Timezone"):
            if not value:
                return "empty"
        elif key == "Environment":
            return check_environment(value)
        elif key in ("HealthInterval", "HealthTimeout", "HealthStartPeriod"):
            if not (DURATION.fullmatch(value) or (key == "HealthInterval" and value == "disable")):
                return f"{value!r} is not a duration like 30s or 1m30s"
        elif key in ("HealthRetries", "StopTimeout") and not value.isdigit():
            return "expected a whole number"
    if key == "Label" and not re.fullmatch(r"[\w.\-/]+=\S*", value):
        return "expected key=value"
    return None


# ---------------------------------------------------------------- the validator


def validate_unit(path: Path) -> list[str]:
    """Every problem Quadlet (Podman 5.0) would have with this file, as messages."""
    unit = parse_unit(path)
    problems = list(unit.problems)
    if unit.kind not in QUADLET_SECTION:
        return [*problems, f"{path.name}: not a .container, .volume or .network unit"]
    own = QUADLET_SECTION[unit.kind]
    if own not in unit.sections:
        problems.append(f"{path.name}: no [{own}] section")
    for section in unit.sections:
        if section not in (own, *PASSTHROUGH_SECTIONS):
            problems.append(f"{path.name}: unknown section [{section}] in a .{unit.kind} file")
    seen: dict[tuple[str, str], int] = {}
    for section, key, value, number in unit.entries:
        where = f"{path.name}:{number}: [{section}] {key}="
        if section == own:
            if key not in KEYS[own]:
                problems.append(f"{where}: unknown Quadlet key")
                continue
            if (section, key) in seen and key not in MULTI_VALUED[own]:
                problems.append(f"{where}: given twice (also line {seen[section, key]})")
            seen.setdefault((section, key), number)
            problem = check_value(section, key, value, unit)
            if problem:
                problems.append(f"{where}{value}: {problem}")
        elif section == "Install" and key not in INSTALL_KEYS:
            problems.append(f"{where}: Quadlet applies only {sorted(INSTALL_KEYS)} from [Install]")
        elif section == "Service" and unit.kind == "container":
            if key in ("ExecStart", "ExecStop", "ExecStopPost"):
                problems.append(f"{where}: Quadlet writes this itself")
            if key == "Type" and value not in ("notify", "oneshot"):
                problems.append(f"{where}{value}: Quadlet allows only notify or oneshot")
    if unit.kind == "container" and not unit.value("Container", "Image"):
        problems.append(f"{path.name}: [Container] needs Image=")
    return problems


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def minimum_podman(unit: Unit) -> str:
    """The oldest Podman whose Quadlet knows every key and value this unit uses."""
    needed = ["4.4"]
    for section, key, value, _ in unit.entries:
        if section in KEYS and key in KEYS[section]:
            needed.append(KEYS[section][key])
        if (section, key, value) in VALUE_SINCE:
            needed.append(VALUE_SINCE[section, key, value])
    return max(needed, key=_version)


def service_part(path: Path) -> str:
    """What Quadlet hands to systemd: [Unit], [Service] and [Install], plus an ExecStart.

    Quadlet writes the ExecStart= (the podman command) itself; /bin/true stands
    in for it so systemd can load the unit.
    """
    unit = parse_unit(path)
    text = []
    for section in PASSTHROUGH_SECTIONS:
        entries = [(k, v) for s, k, v, _ in unit.entries if s == section]
        if section == "Service":
            entries.append(("ExecStart", "/bin/true"))
        if entries or section == "Service":
            text.append(f"[{section}]")
            text.extend(f"{k}={v}" for k, v in entries)
            text.append("")
    return "\n".join(text)


def systemd_verify(service: Path) -> list[str]:
    """systemd-analyze's complaints about one .service file (empty when it is clean).

    `systemd-analyze verify` reports an unknown key or section only as a
    warning and may still exit 0, so every line naming the file counts.
    """
    run = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (run.stdout + run.stderr).splitlines()
    complaints = [line for line in output if service.name in line]
    if run.returncode != 0 and not complaints:
        complaints = output or [f"exit status {run.returncode}"]
    return complaints


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


# ---------------------------------------------------------------- the shipped units


def test_the_expected_units_are_shipped():
    names = {p.name for p in UNIT_FILES}
    assert names == {
        "musegate.container",
        "musegate.volume",
        "musegate.network",
        "navidrome.container",
        "navidrome.volume",
    }


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_unit_is_valid_quadlet(path):
    assert validate_unit(path) == []


@pytest.mark.parametrize("path", UNIT_FILES, ids=lambda p: p.name)
def test_unit_has_no_private_ports_or_privileges(path):
    unit = parse_unit(path)
    args = " ".join(unit.values("Container", "PodmanArgs"))
    assert "--privileged" not in args
    assert not unit.values("Container", "AddCapability")
    # UserNS=keep-id is only needed to write into a host folder as yourself;
    # these units write only to named volumes.
    assert not unit.values("Container", "UserNS")


def test_references_between_units_resolve():
    units = {p.name: parse_unit(p) for p in UNIT_FILES}
    containers = [u for u in units.values() if u.kind == "container"]
    referenced = set()
    for unit in containers:
        for network in unit.values("Container", "Network"):
            assert network.endswith(".network"), (
                f"{unit.path.name}: Network={network} is not a Quadlet network"
            )
            assert network in units, f"{unit.path.name}: {network} is not in quadlets/"
            referenced.add(network)
        for volume in unit.values("Container", "Volume"):
            source = volume.split(":")[0]
            if source.endswith(".volume"):
                assert source in units, f"{unit.path.name}: {source} is not in quadlets/"
                referenced.add(source)
        for dependency in unit.values("Unit", "After") + unit.values("Unit", "Wants"):
            for name in dependency.split():
                stem = name.removesuffix(".service")
                assert f"{stem}.container" in units, f"{unit.path.name}: {name} is not a unit here"
    orphans = {n for n, u in units.items() if u.kind != "container"} - referenced
    assert not orphans, f"no container uses {sorted(orphans)}"
    # Both containers share the one network, or musegate cannot reach Navidrome.
    assert units["musegate.container"].values("Container", "Network") == units[
        "navidrome.container"
    ].values("Container", "Network")


def test_musegate_reaches_navidrome_by_its_container_name():
    musegate = parse_unit(QUADLETS / "musegate.container")
    navidrome = parse_unit(QUADLETS / "navidrome.container")
    env = dict(
        w.partition("=")[::2]
        for v in musegate.values("Container", "Environment")
        for w in shlex.split(v)
    )
    # Quadlet names a container systemd-<unit> unless ContainerName= says otherwise.
    name = navidrome.value("Container", "ContainerName") or "systemd-navidrome"
    assert env["MUSEGATE_SOURCE"] == "subsonic"
    assert env["MUSEGATE_UPSTREAM_URL"] == f"http://{name}:4533"
    # Both see the library at the same place, so the path map is the identity.
    music = [v for v in navidrome.values("Container", "Volume") if v.split(":")[1] == "/music"]
    assert music and env["MUSEGATE_PATH_MAP"] == "/music=/music"


def test_musegate_container_follows_the_deployment_contract():
    unit = parse_unit(QUADLETS / "musegate.container")
    text = unit.path.read_text(encoding="utf-8")
    assert unit.value("Container", "Image") == "ghcr.io/musegate/musegate:latest"
    assert unit.value("Container", "AutoUpdate") == "registry"
    # The way to a locally built image is spelled out, since none is published.
    assert "podman build --format docker -t localhost/musegate:latest -f podman/Containerfile ." in text
    assert re.search(r"^#\s*Image=localhost/musegate:latest$", text, re.M)
    assert re.search(r"^#\s*AutoUpdate=local$", text, re.M)
    volumes = {v.split(":")[1]: v for v in unit.values("Container", "Volume")}
    assert volumes["/data"].split(":")[0] == "musegate.volume"
    assert "ro" in volumes["/music"].split(":")[2].split(",")
    assert "ro" not in volumes["/data"].split(":")[2:3]
    port = FIELD_BY_NAME["port"].default()
    assert unit.values("Container", "PublishPort") == [f"{port}:{port}"]
    assert unit.value("Container", "HealthCmd") == "musegate health"
    assert unit.value("Container", "Notify") == "healthy"
    assert unit.value("Container", "EnvironmentFile") == "%h/.config/musegate/musegate.env"
    assert "musegate-upstream-password,type=env,target=MUSEGATE_UPSTREAM_PASSWORD" in unit.values(
        "Container", "Secret"
    )
    assert unit.value("Install", "WantedBy") == "default.target"
    assert unit.value("Service", "Restart") == "on-failure"


def test_systemd_waits_longer_than_podman_on_stop():
    unit = parse_unit(QUADLETS / "musegate.container")
    stop_timeout = int(unit.value("Container", "StopTimeout"))
    systemd_timeout = unit.value("Service", "TimeoutStopSec")
    assert systemd_timeout.isdigit() and int(systemd_timeout) > stop_timeout


def test_every_musegate_variable_is_a_real_setting():
    """Names in Environment=, Secret= targets and the example env file, set or commented out."""
    active, commented = [], []
    for path in UNIT_FILES:
        active += [n for n in environment_names(parse_unit(path)) if n.startswith("MUSEGATE_")]
        pattern = r"^#\s*(?:Environment=|Secret=.*target=)(MUSEGATE_\w+)"
        commented += re.findall(pattern, path.read_text(encoding="utf-8"), re.M)
    example = (QUADLETS / "musegate.env.example").read_text(encoding="utf-8")
    active += re.findall(r"^(MUSEGATE_\w+)=", example, re.M)
    commented += re.findall(r"^#(MUSEGATE_\w+)=", example, re.M)
    assert "MUSEGATE_UPSTREAM_URL" in active and "MUSEGATE_WORKERS" in commented
    for name in active:
        assert name[len("MUSEGATE_") :].lower() in FIELD_BY_NAME, (
            f"{name} is not a musegate setting"
        )
    for name in commented:
        key = name[len("MUSEGATE_") :].lower()
        assert key in FIELD_BY_NAME, f"{name} is not a musegate setting"


def test_env_example_is_an_env_file_podman_reads_literally():
    example = (QUADLETS / "musegate.env.example").read_text(encoding="utf-8")
    for number, line in enumerate(example.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        assert eq and ENV_NAME.fullmatch(name), f"line {number}: {line!r}"
        assert not value.startswith(("'", '"')), (
            f"line {number}: quotes would become part of the value"
        )
        # Secrets belong in Podman secrets, not in a file next to the units.
        assert not FIELD_BY_NAME[name[len("MUSEGATE_") :].lower()].secret, (
            f"line {number}: {name} is a secret"
        )


def test_needed_podman_version_is_the_documented_one():
    unit = parse_unit(QUADLETS / "musegate.container")
    assert minimum_podman(unit) == "5.0"
    # The comments promise 4.6 once Notify=healthy and StopTimeout= are removed.
    unit.entries = [e for e in unit.entries if e[1] not in ("Notify", "StopTimeout")]
    assert minimum_podman(unit) == "4.6"
    text = (QUADLETS / "musegate.container").read_text(encoding="utf-8")
    assert "Podman 5.0 or later" in text and "Podman 4.6 to 4.9" in text
    assert minimum_podman(parse_unit(QUADLETS / "navidrome.container")) == "4.6"
    assert "Podman 4.6 or later" in (QUADLETS / "navidrome.container").read_text(encoding="utf-8")


@needs_systemd_analyze
@pytest.mark.parametrize(
    "path", [p for p in UNIT_FILES if p.suffix == ".container"], ids=lambda p: p.name
)
def test_systemd_accepts_the_sections_it_is_handed(path, tmp_path):
    service = tmp_path / f"{path.stem}.service"
    service.write_text(service_part(path), encoding="utf-8")
    assert systemd_verify(service) == []


# ---------------------------------------------------------------- the checks can fail


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
[Unit]
Description=x

[Container]
Image=docker.io/library/alpine:3.20
PublishPort=127.0.0.1:8080:80
Volume=data.volume:/data:Z
Volume=%h/Music:/music:ro,z
Secret=pw,type=env,target=PASSWORD
HealthCmd=true
Notify=healthy

[Service]
Restart=on-failure

[Install]
WantedBy=default.target
"""


def test_validator_accepts_a_good_unit(tmp_path):
    assert validate_unit(_write(tmp_path, "x.container", GOOD)) == []


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("HealthCmd=true", "HealthCommand=true", "HealthCommand=: unknown Quadlet key"),
        ("[Install]", "[Instal]", "unknown section [Instal]"),
        ("WantedBy=", "UpheldBy=", "Quadlet applies only"),
        ("Image=docker.io/library/alpine:3.20", "Image=alpine", "not fully qualified"),
        (
            "Image=docker.io/library/alpine:3.20",
            "Image=docker.io/library/alpine",
            "not fully qualified",
        ),
        ("PublishPort=127.0.0.1:8080:80", "PublishPort=8080:80000", "bad container port"),
        ("PublishPort=127.0.0.1:8080:80", "PublishPort=300.0.0.1:8080:80", "bad IPv4 address"),
        ("PublishPort=127.0.0.1:8080:80", "PublishPort=:80", "needs an ip"),
        ("/music:ro,z", "/music:readonly", "unknown volume options"),
        ("/music:ro,z", "/music:ro,rw", "contradictory"),
        ("Volume=data.volume:/data:Z", "Volume=data.volume:data", "not an absolute path"),
        ("type=env,target=PASSWORD", "type=env", "needs target="),
        ("type=env,target=PASSWORD", "type=file,target=PASSWORD", "mount or env"),
        ("HealthCmd=true", "HealthCmd=", "Notify=healthy needs HealthCmd="),
        ("Notify=healthy", "Notify=ready", "boolean or healthy"),
        ("Notify=healthy", "Notify=healthy\nAutoUpdate=always", "registry or local"),
        ("Restart=on-failure", "Restart=on-failure\nExecStart=/bin/sh", "writes this itself"),
        ("Notify=healthy", "Notify=healthy\nRemapUsers=keep-id", "RemapUsers=: unknown"),
        ("Notify=healthy", "Notify=healthy\nNotify=true", "given twice"),
        ("Notify=healthy", "Notify=healthy\nHealthInterval=soon", "not a duration"),
        ("[Unit]\nDescription=x", "Description=x\n[Unit]", "before any section"),
    ],
)
def test_validator_rejects(tmp_path, old, new, message):
    assert old in GOOD
    problems = validate_unit(_write(tmp_path, "x.container", GOOD.replace(old, new, 1)))
    assert any(message in p for p in problems), problems


def test_validator_rejects_a_container_key_in_a_volume(tmp_path):
    problems = validate_unit(_write(tmp_path, "x.volume", "[Volume]\nExec=/bin/sh\nLabel=a=b\n"))
    assert any("[Volume] Exec=: unknown Quadlet key" in p for p in problems)
    problems = validate_unit(_write(tmp_path, "y.volume", "[Container]\nImage=docker.io/x/y:1\n"))
    assert any("no [Volume] section" in p for p in problems)
    assert any("unknown section [Container]" in p for p in problems)


def test_localhost_image_cannot_be_updated_from_a_registry(tmp_path):
    text = GOOD.replace("docker.io/library/alpine:3.20", "localhost/musegate:latest")
    assert validate_unit(_write(tmp_path, "x.container", text)) == []
    bad = text.replace("Notify=healthy", "Notify=healthy\nAutoUpdate=registry")
    assert any("not localhost/" in p for p in validate_unit(_write(tmp_path, "y.container", bad)))
    good = text.replace("Notify=healthy", "Notify=healthy\nAutoUpdate=local")
    assert validate_unit(_write(tmp_path, "z.container", good)) == []


def test_minimum_version_follows_the_keys(tmp_path):
    unit = parse_unit(_write(tmp_path, "x.container", GOOD))
    assert minimum_podman(unit) == "5.0"  # Notify=healthy
    unit = parse_unit(
        _write(tmp_path, "y.container", GOOD.replace("Notify=healthy", "Notify=true"))
    )
    assert minimum_podman(unit) == "4.5"  # Secret= and HealthCmd=


def test_service_part_keeps_only_what_systemd_reads():
    text = service_part(QUADLETS / "musegate.container")
    assert "[Container]" not in text and "Image=" not in text
    assert "[Service]" in text and "ExecStart=/bin/true" in text and "[Install]" in text


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("TimeoutStopSec=", "TimeoutStopSecs="),  # a misspelled [Service] key
        ("Restart=on-failure", "Restart=sometimes"),  # a value systemd cannot parse
        ("TimeoutStopSec=90", "TimeoutStopSec=soon"),
        ("[Install]", "[Instal]"),
    ],
)
def test_systemd_verify_catches_mistakes(tmp_path, old, new):
    text = service_part(QUADLETS / "musegate.container")
    assert old in text
    service = _write(tmp_path, "musegate.service", text.replace(old, new, 1))
    assert systemd_verify(service), "systemd-analyze verify found nothing wrong"

"""The Quadlet key reference the unit files in quadlets/ are checked against.

Facts taken from Podman 5.0.0: the keys are the ones its podman-systemd.unit(5)
documents for [Container], [Volume] and [Network]
(docs/source/markdown/podman-systemd.unit.5.md at tag v5.0.0). The release each
key first appeared in comes from the supported-key lists of Quadlet
(pkg/systemd/quadlet/quadlet.go) at the tags v4.4.0, v4.5.0 ... v4.9.0, v5.0.0;
4.4 is the first Podman with Quadlet. Keys Podman 5.0 still parses but no longer
documents (RemapUsers, RemapUid, RemapGid, RemapUidSize, VolatileTmp) are left
out on purpose, so a unit using them is rejected.

Quadlet passes every other section through to systemd untouched, except that
it applies only Alias=, WantedBy= and RequiredBy= from [Install] itself.
"""

REFERENCE = "podman-systemd.unit(5), Podman 5.0.0"

# Quadlet unit type (file extension) -> the section Quadlet reads.
QUADLET_SECTION = {"container": "Container", "volume": "Volume", "network": "Network"}

# Sections Quadlet copies into the generated .service for systemd to read.
PASSTHROUGH_SECTIONS = ("Unit", "Service", "Install")

# [Install] keys Quadlet applies when it generates the service (5.0 also has
# DefaultInstance= for template units, which these files are not).
INSTALL_KEYS = {"Alias": "4.4", "WantedBy": "4.4", "RequiredBy": "4.4"}

# Values that need a newer Podman than their key.
VALUE_SINCE = {("Container", "Notify", "healthy"): "5.0"}

# section -> {key: first Podman release with it}
KEYS: dict[str, dict[str, str]] = {
    "Container": {
        "AddCapability": "4.4",
        "AddDevice": "4.4",
        "Annotation": "4.4",
        "AutoUpdate": "4.6",
        "ContainerName": "4.4",
        "ContainersConfModule": "4.8",
        "DNS": "4.7",
        "DNSOption": "4.7",
        "DNSSearch": "4.7",
        "DropCapability": "4.4",
        "Entrypoint": "5.0",
        "Environment": "4.4",
        "EnvironmentFile": "4.4",
        "EnvironmentHost": "4.4",
        "Exec": "4.4",
        "ExposeHostPort": "4.4",
        "GIDMap": "4.8",
        "GlobalArgs": "4.8",
        "Group": "4.4",
        "HealthCmd": "4.5",
        "HealthInterval": "4.5",
        "HealthOnFailure": "4.5",
        "HealthRetries": "4.5",
        "HealthStartPeriod": "4.5",
        "HealthStartupCmd": "4.5",
        "HealthStartupInterval": "4.5",
        "HealthStartupRetries": "4.5",
        "HealthStartupSuccess": "4.5",
        "HealthStartupTimeout": "4.5",
        "HealthTimeout": "4.5",
        "HostName": "4.6",
        "IP": "4.5",
        "IP6": "4.5",
        "Image": "4.4",
        "Label": "4.4",
        "LogDriver": "4.5",
        "Mask": "4.6",
        "Mount": "4.5",
        "Network": "4.4",
        "NoNewPrivileges": "4.4",
        "Notify": "4.4",
        "PidsLimit": "4.7",
        "Pod": "5.0",
        "PodmanArgs": "4.4",
        "PublishPort": "4.4",
        "Pull": "4.6",
        "ReadOnly": "4.4",
        "ReadOnlyTmpfs": "4.8",
        "Rootfs": "4.5",
        "RunInit": "4.4",
        "SeccompProfile": "4.4",
        "Secret": "4.5",
        "SecurityLabelDisable": "4.5",
        "SecurityLabelFileType": "4.5",
        "SecurityLabelLevel": "4.5",
        "SecurityLabelNested": "4.6",
        "SecurityLabelType": "4.5",
        "ShmSize": "4.7",
        "StopTimeout": "5.0",
        "SubGIDMap": "4.8",
        "SubUIDMap": "4.8",
        "Sysctl": "4.6",
        "Timezone": "4.4",
        "Tmpfs": "4.5",
        "UIDMap": "4.8",
        "Ulimit": "4.7",
        "Unmask": "4.6",
        "User": "4.4",
        "UserNS": "4.5",
        "Volume": "4.4",
        "WorkingDir": "4.6",
    },
    "Volume": {
        "ContainersConfModule": "4.8",
        "Copy": "4.4",
        "Device": "4.4",
        "Driver": "4.8",
        "GlobalArgs": "4.8",
        "Group": "4.4",
        "Image": "4.8",
        "Label": "4.4",
        "Options": "4.4",
        "PodmanArgs": "4.6",
        "Type": "4.4",
        "User": "4.4",
        "VolumeName": "4.7",
    },
    "Network": {
        "ContainersConfModule": "4.8",
        "DNS": "4.7",
        "DisableDNS": "4.4",
        "Driver": "4.4",
        "Gateway": "4.4",
        "GlobalArgs": "4.8",
        "IPAMDriver": "4.4",
        "IPRange": "4.4",
        "IPv6": "4.4",
        "Internal": "4.4",
        "Label": "4.4",
        "NetworkName": "4.7",
        "Options": "4.4",
        "PodmanArgs": "4.6",
        "Subnet": "4.4",
    },
}

# Keys that may be given more than once (the rest: once at most).
MULTI_VALUED: dict[str, frozenset[str]] = {
    "Container": frozenset(
        {
            "AddCapability",
            "AddDevice",
            "Annotation",
            "ContainersConfModule",
            "DNS",
            "DNSOption",
            "DNSSearch",
            "DropCapability",
            "Environment",
            "EnvironmentFile",
            "ExposeHostPort",
            "GIDMap",
            "GlobalArgs",
            "Label",
            "Mask",
            "Mount",
            "Network",
            "PodmanArgs",
            "PublishPort",
            "Secret",
            "Sysctl",
            "Tmpfs",
            "UIDMap",
            "Ulimit",
            "Unmask",
            "Volume",
        }
    ),
    "Volume": frozenset({"ContainersConfModule", "GlobalArgs", "Label", "PodmanArgs"}),
    "Network": frozenset(
        {
            "ContainersConfModule",
            "DNS",
            "Gateway",
            "GlobalArgs",
            "IPRange",
            "Label",
            "Options",
            "PodmanArgs",
            "Subnet",
        }
    ),
}

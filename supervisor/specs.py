"""From a container's configuration (the TOML contract) to the runtime's spec."""

from __future__ import annotations

from .linux import caps
from .model.config import ContainerConfig
from .runtime import ContainerSpec, Mount


def spec_from_config(cfg: ContainerConfig, **extra: object) -> ContainerSpec:
    """The runtime spec for ``cfg``; ``extra`` sets runtime-only fields (hold, cgroups)."""
    return ContainerSpec(
        name=cfg.name,
        command=list(cfg.command),
        rootfs=cfg.rootfs,
        hostname=cfg.hostname or None,
        namespaces=tuple(cfg.namespaces),
        env=dict(cfg.env),
        workdir=cfg.workdir,
        uid=cfg.uid,
        gid=cfg.gid,
        capabilities=caps.resolve(add=cfg.cap_add, drop=cfg.cap_drop),
        no_new_privs=cfg.no_new_privs,
        mounts=tuple(Mount(target=m.target, source=m.source, type=m.type,
                           readonly=m.readonly, size=m.size) for m in cfg.mounts),
        readonly_rootfs=cfg.readonly_rootfs,
        **extra,
    )

"""Tags and Meta from a container's SERVICE_* keys, within the bounds of
validate.Limits and Consul's own rules. Pure: no I/O, never raises."""

from __future__ import annotations

import re
from typing import Any

from consul_reg.core.records import MARKER_SOURCE_KEY
from consul_reg.mapping import labels
from consul_reg.mapping.labels import KeyValue, show
from consul_reg.mapping.settings import MappingSettings
from consul_reg.mapping.tags_template import TemplateError
from consul_reg.mapping.validate import Limits, has_control

# Consul's rules for service Meta (agent/structs validateMetaPair); the counts are in Limits.
META_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch
META_RESERVED_PREFIX = "consul-"
# Ours: the ownership marker, the digest, the sidecar's link (model.py), and any we add later.
OWN_META_PREFIX = "consul_reg_"


def is_reserved_meta_key(key: str) -> bool:
    """A Meta key no container may set: Consul's `consul-` prefix, consul-reg's own
    `consul_reg_` prefix and the marker's `external-source`. Case-insensitive, and
    meant for the key as it is registered (after the characters are fixed)."""
    folded = key.lower()
    return folded.startswith((META_RESERVED_PREFIX, OWN_META_PREFIX)) or folded == MARKER_SOURCE_KEY


def without_reserved(meta: dict[str, str]) -> dict[str, str]:
    """`meta` without any reserved key: what the daemon's marker is then added to,
    so that only the marker it writes is ever in a record."""
    return {key: value for key, value in meta.items() if not is_reserved_meta_key(key)}


def tags_of(entry: KeyValue | None, limits: Limits, warnings: list[str]) -> list[str]:
    """One SERVICE_TAGS value split (once per container and key), bad tags dropped."""
    if entry is None:
        return []
    where = f"key {show(entry.original_key)}"
    if len(entry.value) > limits.tags_value_length:
        warnings.append(f"{where}: {len(entry.value)} characters, over the {limits.tags_value_length} "
                        "a tags value may hold; ignored")
        return []
    return clean_tags(labels.split_tags(entry.value), where, limits, warnings)


def clean_tags(tags: list[str], where: str, limits: Limits, warnings: list[str]) -> list[str]:
    kept = []
    for tag in tags:
        if len(tag) > limits.tag_length:
            warnings.append(f"{where}: tag {show(tag)} is longer than {limits.tag_length} characters "
                            "(--max-tag-length), dropped")
        elif has_control(tag):
            warnings.append(f"{where}: tag {show(tag)} holds control characters, dropped")
        else:
            kept.append(tag)
    return kept


def capped_tags(tags: list[str], service_id: str, settings: MappingSettings, warnings: list[str]) -> list[str]:
    """The container's tags, at most tags_per_service, then the operator's -tags (never cut)."""
    mine = labels.unique(tags)
    limit = settings.limits.tags_per_service
    if len(mine) > limit:
        warnings.append(f"service {show(service_id)}: {len(mine)} tags, only the first {limit} kept "
                        "(--max-tags-per-service)")
        mine = mine[:limit]
    return mine + list(settings.force_tags)


def template_tags(container: dict[str, Any], settings: MappingSettings, warnings: list[str]) -> list[str]:
    assert settings.tags_template is not None
    try:
        rendered = settings.tags_template.render(container)
    except TemplateError as error:
        warnings.append(f"-tags template: {error}; no -tags for this container")
        return []
    if len(rendered) > settings.limits.tags_value_length:
        warnings.append(f"-tags template: rendered {len(rendered)} characters, over the "
                        f"{settings.limits.tags_value_length} a tags value may hold; no -tags for this container")
        return []
    return clean_tags(labels.split_tags(rendered), "-tags template", settings.limits, warnings)


def service_meta(keys: dict[str, KeyValue], warnings: list[str], limits: Limits = Limits(),
                 marker_pairs: int = 4) -> dict[str, str]:
    """Every key that does not configure the daemon, as Consul-valid Meta, leaving
    room for the `marker_pairs` pairs of the ownership marker and digest."""
    meta: dict[str, str] = {}
    for key in sorted(keys):
        entry = keys[key]
        if labels.is_daemon_key(key):
            continue
        where = f"key {show(entry.original_key)}"
        fixed = re.sub(r"[^A-Za-z0-9_-]", "_", key)
        if is_reserved_meta_key(fixed):  # as registered: 'consul.reg.instance' would be 'consul_reg_instance'
            warnings.append(f"{where}: Meta key {show(fixed)} is reserved, dropped")
            continue
        if fixed != key:
            warnings.append(f"{where}: Meta keys may only hold A-Z a-z 0-9 _ -, registered as {show(fixed)}")
        if len(fixed) > limits.meta_key_length:
            warnings.append(f"{where}: Meta key longer than {limits.meta_key_length} characters, dropped")
            continue
        if len(entry.value) > limits.meta_value_length:
            warnings.append(f"{where}: value longer than {limits.meta_value_length} characters "
                            f"({len(entry.value)}), dropped")
            continue
        if fixed in meta:
            warnings.append(f"{where}: Meta key {show(fixed)} already set by another key, dropped")
            continue
        if len(meta) >= limits.meta_pairs - marker_pairs:
            warnings.append(f"{where}: Consul allows {limits.meta_pairs} Meta pairs and consul-reg needs "
                            f"{marker_pairs}, dropped")
            continue
        meta[fixed] = entry.value
    return meta

"""Keys, paths and znodes of the mirrors, built so they never leave their prefix."""

from __future__ import annotations

import hashlib

from consul_reg.core.errors import RegistryError
from consul_reg.core.records import Owner, as_owner
from consul_reg.core.text import quoted


def segment_problem(segment: str) -> str:
    """"" when `segment` can be one level of a key, else why not."""
    if segment in ("", ".", ".."):
        return f"{segment!r} cannot be a key segment"
    if "/" in segment or any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
        return f"{segment!r} holds '/' or a control character"
    return ""


def child_key(prefix: str, *segments: str) -> str:
    """`prefix/segment/...`; raises RegistryError for a segment that could climb out."""
    for segment in segments:
        problem = segment_problem(segment)
        if problem:
            raise RegistryError(f"refusing key under {prefix}: {problem}")
    return "/".join((prefix, *segments))


def owner_tag(hostname: Owner | str) -> int:
    """A 63-bit number naming this host's daemon (its --instance too: another owner on the
    same host), stored with each record where the layout leaves no room for a marker
    (Consul KV's Flags)."""
    owner = as_owner(hostname)
    instance = owner.instance
    digest = hashlib.sha256(b"consul-reg\0" + owner.host.encode() + (b"\0" + instance.encode() if instance else b"")
                            ).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


# Meta of a mirror's listed record that is not this daemon's: who holds it, for the warning.
HOLDER_KEY = "consul_reg_holder"
MAX_SHOWN_VALUE = 80


def shown(value: str) -> str:
    """A value someone else wrote, fit for one log line (escaped, cut)."""
    return quoted(value, MAX_SHOWN_VALUE)


def default_id_owned(service_id: str, hostname: Owner | str) -> bool:
    """This host's default IDs (`<hostname>:`, in any case: one ID in Consul's catalog),
    for a daemon without --instance: no container may choose one (validate.default_id_host),
    so whoever else holds such a key took it (an older consul-reg of another host, a
    writer by hand); the rightful host takes it back. Also the keys of consul-reg before
    owner markers."""
    owner = as_owner(hostname)
    return service_id.lower().startswith(owner.host.lower() + ":") and not owner.instance

"""consul-reg: registers Docker containers' services in Consul.

The version has one source, the package's metadata (pyproject.toml's
`version`); `consul-reg --version` and the image's OCI labels show it."""

from __future__ import annotations


def version() -> str:
    """The installed package's version; "0+unknown" when the source tree runs uninstalled."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("consul-reg")
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> str:  # `consul_reg.__version__`, read lazily: importing the package stays cheap
    if name == "__version__":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""consul-reg: registers Docker containers' services in Consul."""

__version__ = "0.1.0"

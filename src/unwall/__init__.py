"""unwall: a censorship-circumvention bridge."""

__version__ = "0.1.0"

"""meshplane's process: settings, model, config sources, push orchestration, CLI."""

__version__ = "0.1.0"

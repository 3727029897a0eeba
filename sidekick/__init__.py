"""sidekick: the rancher/rke-tools toolbox as one Python multi-call executable."""

__version__ = "0.1.0"

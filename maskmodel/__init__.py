"""maskmodel: masked modeling and token reduction in JAX/Flax."""

__version__ = "0.1.0"

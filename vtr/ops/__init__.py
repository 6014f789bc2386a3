"""Shared tensor kernels used by several methods. Pure functions, device-agnostic, no model knowledge."""

"""Plots for landscape.hessian (filled in by that module)."""

__all__: list[str] = []

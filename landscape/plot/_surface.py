"""Plots for landscape.surface (filled in by that module)."""

__all__: list[str] = []

"""Plots for landscape.connect (filled in by that module)."""

__all__: list[str] = []

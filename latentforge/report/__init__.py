"""Reporting: figures (image grids, captioned samples) written as PNG files."""

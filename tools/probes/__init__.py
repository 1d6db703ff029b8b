"""Probes that place the learned models between a floor and a ceiling of the same test set:
hand-made references (``references``), what one grid cell holds (``cell_probe``), how local a
backbone's grid is (``locality``)."""

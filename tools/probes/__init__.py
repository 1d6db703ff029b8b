"""Probes of a choice the pipeline takes as given: how local each candidate backbone block's grid
is (``locality``), read to choose ``model.grid_block``. (The floor, the ceilings and the cached
grid's locality of every split's test set are the pipeline's ``references`` stage.)"""

"""Analyses of trained models, beyond their scores (run as `python -m stn.results learned|probe`):

learned  what the trained spatial transformers undo: the share of the test digits' known rotation, scale and offset
probe    could a loc net body see the distortion at all? trained, supervised, to regress it
"""

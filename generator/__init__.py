"""Layered synthetic-artist dataset: procedural artist hands, part libraries, icons and chimeras.

Real illustration corpora with ground-truth provenance (which artist, which original, which
part came from where) do not exist, so we synthesise one: every "artist" is a seeded `Hand`
with its own palette, line and shading habits, its icons are combinations of a per-artist part
library, and chimeras recombine those icons with exact records of every source region.
"""

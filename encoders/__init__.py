"""Encoders: media -> content embeddings -> predicted CF factors (text, vision, audio, fusion, training)."""

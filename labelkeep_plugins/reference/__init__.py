"""The frozen reference: its snapshot (a copy taken before compression, and its checksum)
and the cache of its logits.
"""

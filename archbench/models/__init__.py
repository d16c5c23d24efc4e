"""Architectures: building blocks, backbones, necks, heads and the detector composer."""

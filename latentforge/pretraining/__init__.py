"""Encoders pretrained without labels (MERT for audio), whose frozen features serve the probes."""

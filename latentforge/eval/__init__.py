"""Evaluation: judges that score generated samples without a learned network."""

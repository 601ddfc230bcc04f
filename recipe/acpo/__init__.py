"""The ACPO recipe for verl 0.9.1."""

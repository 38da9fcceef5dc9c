"""cxrspark: distributed chest X-ray pipeline."""
__version__ = "0.1.0"

"""musegate: sonic similarity for self-hosted music servers."""

__version__ = "0.1.0"

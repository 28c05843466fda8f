"""The web face of musegate: its JSON API (and, later, the proxy) in one aiohttp app."""

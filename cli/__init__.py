"""The composition root: the ``musegate`` command and every entry point it starts.

Everything else (``gateway``, ``musegate``'s services, ``index``, ``analysis``,
``adapters``) is imported from here and never imports this package, so the
dependency graph has one top.
"""

"""Reliability checks (issue 12): crashes, upstream faults, bad input, auth, load.

Fast parts run in ``make test``; the ``reliability`` marker (``make reliability``)
and ``soak`` marker / ``load.py`` (``make load``, ``make soak``) hold the slow ones.
Figures are reported in docs/reliability.md.
"""

"""Helpers several layers share: MLflow tracking, report HTML, and where a grid of tasks runs.

Nothing here imports ``agents``, ``experiments``, ``training`` or ``serving``: every layer may
import this package, and it imports only ``envs``-free utilities.
"""

"""
The modules here are trial modules, run by tests/test_integration.py in a
subprocess under a chosen reactor; pytest must not collect them itself (it
would run them on whatever reactor its own process happens to install).
"""

collect_ignore_glob = ["test_*.py"]

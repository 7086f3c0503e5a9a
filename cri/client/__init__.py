"""The ``rktlet pod|app|image`` command-line client (a CRI client; it runs outside the daemon).

``main`` parses and dispatches; one module per verb group (``pods``, ``apps``,
``images``; ``image_store`` for the commands that work on the local image store with
no daemon), and what they share: ``common`` (the CRI connection, exit codes, options),
``output`` (tables, JSON, YAML), ``stream`` (interactive exec and attach).  Nothing
here imports the daemon's modules (tests/test_layout.py holds it to that).
"""

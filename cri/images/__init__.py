"""Images for the CRI: registry pulls, the content store, layers, root filesystems.

Modules: ``reference`` (name normalisation), ``config`` (the ``[images]`` TOML
section), ``auth`` and ``registry`` (the distribution client), ``manifest`` (OCI and
Docker schema 2 documents), ``store`` (blobs, layers and records in SQLite), ``unpack``
(layer tarballs → overlay lower dirs), ``rootfs`` (per-container overlay mounts),
``importer`` (offline archives), ``manager`` (pull/import/remove orchestration),
``usage`` (disk usage, measured in the background) and ``service`` (the CRI
ImageService).
"""

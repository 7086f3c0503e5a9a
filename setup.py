"""The build's one addition to pyproject.toml: the optional C accelerator of ``iottymux logs``.

``optional=True``: where no C compiler or Python headers are at hand the package still
installs, and :mod:`iottymux.logblocks` uses its own pure-Python path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "iottymux._prefixes",
            ["iottymux/_prefixes.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)

"""Build of the Cython extension ``shardws._core`` only; metadata lives in pyproject.toml.

Switches (environment): ``SHARDWS_DEBUG=1`` builds with assertions and line tracing,
``SHARDWS_ANNOTATE=1`` writes the Cython HTML annotation beside the source.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SHARDWS_DEBUG") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
macros = []
if DEBUG:
    directives["linetrace"] = True
    macros = [("CYTHON_TRACE_NOGIL", "1")]

extensions = [
    Extension(
        "shardws._core",
        ["shardws/_core.pyx"],
        define_macros=macros,
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=os.environ.get("SHARDWS_ANNOTATE") == "1",
    )
)

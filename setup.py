"""Only the native row writer lives here; everything else about the package is in pyproject.toml.

`optional=True`: where no C compiler or zlib headers are found (e.g. a slim Airflow image) the
build warns and goes on, and shaping runs in pure Python - same bytes, slower.
"""

from setuptools import Extension, setup

NATIVE = "include/segments_to_lytics"

setup(ext_modules=[Extension("include.segments_to_lytics._fast_rows", [f"{NATIVE}/fast_rows.c"],
                             depends=[f"{NATIVE}/fast_rows_json.h"], libraries=["z"],
                             extra_compile_args=["-O2"], optional=True)])

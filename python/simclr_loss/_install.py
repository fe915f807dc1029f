"""The one command that (re)builds the package's framework extensions against the environment's own
frameworks, for the messages of the front ends whose extension is missing or does not fit."""

REBUILD = ("python3 -m pip install scikit-build-core nanobind && python3 -m pip install "
           "--no-build-isolation --no-deps --force-reinstall /path/to/simclr   (the source folder; "
           "docs/python.md, \"Install\")")

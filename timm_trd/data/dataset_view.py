"""Some images of a timm dataset, as a dataset of its own (for timm's ``create_loader``).

Used by ``timm-trd-eval`` (test subsets, probe images) and by the BatchNorm recalibration (exactly the sampled
images of one recalibration).
"""

import copy
from typing import Sequence

import torch


class OwnTransform(torch.utils.data.Dataset):
    """A timm dataset with a transform of its own: timm's ``create_loader`` sets ``transform`` on the dataset it gets;
    here that goes to a shallow copy of the dataset, so the original (train.py's) and other wrappers keep theirs."""

    def __init__(self, dataset):
        self.dataset = copy.copy(dataset)

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value):
        self.dataset.transform = value

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]


class DatasetView(OwnTransform):
    """Some images of a timm dataset, in a given order, with a transform of their own."""

    def __init__(self, dataset, indices: Sequence[int]):
        super().__init__(dataset)
        self.indices = list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

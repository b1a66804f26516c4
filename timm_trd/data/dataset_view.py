"""Some images of a timm dataset, as a dataset of its own (for timm's ``create_loader``).

Used by ``timm-trd-eval`` (test subsets, probe images) and by the BatchNorm recalibration (exactly the sampled
images of one recalibration).
"""

import copy
from typing import Sequence

import torch


class DatasetView(torch.utils.data.Dataset):
    """Some images of a timm dataset, in a given order. timm's ``create_loader`` sets ``transform`` on the dataset
    it gets; here that goes to this view's own shallow copy of the dataset, so views never share a transform."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = copy.copy(dataset)
        self.indices = list(indices)

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value):
        self.dataset.transform = value

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

"""The 16 categories of Geirhos et al.'s shape-bias stimuli and the classifier classes that stand for them (data).

Geirhos et al., "ImageNet-trained CNNs are biased towards texture; increasing shape bias improves accuracy and
robustness", ICLR 2019. Their stimuli (github.com/rgeirhos/texture-vs-shape, ``stimuli/``, CC-BY 4.0) show objects
of 16 entry-level categories. An ImageNet-1k classifier's answer is turned into one of the 16 by averaging its
softmax probabilities over the ImageNet classes of each category and taking the category with the largest mean.

Source of :data:`IMAGENET_INDICES`: ``code/helper/human_categories.py`` of rgeirhos/texture-vs-shape (commit
ccd0c01), the ``<category>_indices`` lists of ``HumanCategories``, which ``code/probabilities_to_decision.py``
uses; the same sets are used by bethgelab/model-vs-human. They are ImageNet-1k class indices in the standard
(sorted WordNet id) order that timm's ImageNet models use; every index's WordNet id is in the authors' WordNet
list of that category. 207 classes in all, no class in two categories.
"""

from typing import Dict, List, Tuple

#: the 16 categories, sorted
CATEGORIES: Tuple[str, ...] = (
    'airplane', 'bear', 'bicycle', 'bird', 'boat', 'bottle', 'car', 'cat',
    'chair', 'clock', 'dog', 'elephant', 'keyboard', 'knife', 'oven', 'truck')

#: ImageNet-1k class indices per category (source: see the module docstring)
IMAGENET_INDICES: Dict[str, List[int]] = {
    'airplane': [404],
    'bear': [294, 295, 296, 297],
    'bicycle': [444, 671],
    'bird': [8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88, 89, 90, 91, 92, 93,
             94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133, 135, 136, 137, 138, 139, 140, 141, 142,
             143, 144, 145],
    'boat': [472, 554, 625, 814, 914],
    'bottle': [440, 720, 737, 898, 899, 901, 907],
    'car': [436, 511, 817],
    'cat': [281, 282, 283, 284, 285, 286],
    'chair': [423, 559, 765, 857],
    'clock': [409, 530, 892],
    'dog': [152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171,
            172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191,
            193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 205, 206, 207, 208, 209, 210, 211, 212, 213,
            214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 224, 225, 226, 228, 229, 230, 231, 232, 233, 234,
            235, 236, 237, 238, 239, 240, 241, 243, 244, 245, 246, 247, 248, 249, 250, 252, 253, 254, 255, 256,
            257, 259, 261, 262, 263, 265, 266, 267, 268],
    'elephant': [385, 386],
    'keyboard': [508, 878],
    'knife': [499],
    'oven': [766],
    'truck': [555, 569, 656, 675, 717, 734, 864, 867],
}

#: CIFAR-10's classes in its standard label order, which is also the sorted order of class folders (timm's
#: folder reader numbers classes that way)
CIFAR10_CLASSES: Tuple[str, ...] = (
    'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

#: the seven categories CIFAR-10 shares with the stimuli, as CIFAR-10 class names
CIFAR10_MAP: Dict[str, List[str]] = {
    'airplane': ['airplane'], 'bird': ['bird'], 'boat': ['ship'], 'car': ['automobile'], 'cat': ['cat'],
    'dog': ['dog'], 'truck': ['truck'],
}

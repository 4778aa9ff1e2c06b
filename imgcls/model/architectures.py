"""What the pipeline needs to know about each torchvision architecture it accepts: one table, no torch.
Adding an architecture is one row here (its name in `torchvision.models.get_model`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    head: str  # the classifier layer, replaced by a `num_classes`-way one for the new task
    features: int  # the width of the head's input
    cam_layer: str  # the last convolutional block: where Grad-CAM looks
    min_size: int = 1  # the smallest input side (px) its layers accept


ARCHITECTURES = {
    "resnet18": Architecture(head="fc", features=512, cam_layer="layer4"),
    "resnet34": Architecture(head="fc", features=512, cam_layer="layer4"),
    "resnet50": Architecture(head="fc", features=2048, cam_layer="layer4"),
    "resnet101": Architecture(head="fc", features=2048, cam_layer="layer4"),
    "resnet152": Architecture(head="fc", features=2048, cam_layer="layer4"),
    "efficientnet_b0": Architecture(head="classifier.1", features=1280, cam_layer="features.8"),
    "convnext_tiny": Architecture(head="classifier.2", features=768, cam_layer="features.7", min_size=32),
    "mobilenet_v3_small": Architecture(head="classifier.3", features=1024, cam_layer="features.12"),
}

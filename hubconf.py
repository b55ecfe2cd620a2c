"""torch.hub entry points: torch.hub.load("<owner>/<repo>", "efficientnet_b0", num_classes=5, pretrained=True)."""
dependencies = ["torch", "torchvision"]

from model import (  # noqa: E402,F401
                   efficientnet_b0,
                   efficientnet_b1,
                   efficientnet_b2,
                   efficientnet_b3,
                   efficientnet_b4,
                   efficientnet_b5,
                   efficientnet_b6,
                   efficientnet_b7,
)

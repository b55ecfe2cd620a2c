"""The PyTorch backend: a trained EfficientNet with BatchNorm folded, channels_last, under inference_mode;
and Grad-CAM, which only this backend can compute (it needs gradients)."""
import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.utils.fusion
from PIL import Image
from torch import nn

from effnet.checkpoints import WeightsError, checkpoint_header, is_checkpoint, read_weights_file
from effnet.command_line import UsageError
from effnet.data.images import Preprocessing, normalize
from effnet.hardware import keep_freed_memory_for_reuse, resolve_device
from effnet.inference.class_names import (
    ClassNames,
    find_class_names,
    imagenet_class_names,
    read_class_names,
    replace_own_names,
)
from effnet.inference.runtimes import TORCH_PRECISIONS
from effnet.variants import image_settings, is_imagenet
from effnet.weights import bare_state_dict, identify_variant, load_weights, strip_wrappers
from model import ConvBNActivation, EfficientNet, create_model, model_from_checkpoint


def fuse_batchnorm(model: EfficientNet) -> EfficientNet:
    """An inference-only copy of `model` with every BatchNorm folded into the convolution before it.

    Each conv gets weight * gamma / sqrt(var + eps) and a bias, saving a full pass over every feature map;
    outputs equal the unfolded model's in eval mode up to float rounding.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBNActivation) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = torch.nn.utils.fusion.fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return fused


class TorchBackend:
    """A model, its class names and its evaluation preprocessing, ready for batched inference.

    Inference runs on a copy with BatchNorm folded into the convolutions, in channels_last layout, under
    inference_mode; `precision="bfloat16"` adds bfloat16 autocast. Grad-CAM uses the unfolded float32 model.
    """

    name = "torch"
    class_names_note: str | None = None  # set by load(): where the names came from, when the user should know

    def __init__(self, model: EfficientNet, class_names: Sequence[str], image: Mapping[str, Any] | None = None,
                 device: str | torch.device | None = None, precision: str = "float32",
                 origin: str = "a model in memory") -> None:
        if len(class_names) != model.num_classes:
            raise UsageError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
        if precision not in TORCH_PRECISIONS:
            raise UsageError(f"precision {precision!r} is not one of {', '.join(TORCH_PRECISIONS)}")
        self.device = resolve_device(str(device) if device else None)  # refuses meta, absent GPUs, ...
        keep_freed_memory_for_reuse()  # faster steps on Linux, for whichever program runs this backend
        self.model = model.eval().to(self.device)
        self.fast_model = fuse_batchnorm(self.model).to(memory_format=torch.channels_last)
        self.class_names = list(class_names)
        self.preprocessing = Preprocessing.from_settings(image or image_settings(model.variant or "b0"))
        self.precision = precision
        self.variant = model.variant
        self.origin = origin

    @torch.inference_mode()
    def probabilities(self, batch: "np.ndarray | torch.Tensor") -> np.ndarray:
        """(N, 3, H, W) preprocessed images -> (N, classes) float32 probabilities."""
        batch = torch.as_tensor(batch).to(self.device, memory_format=torch.channels_last)
        if self.precision == "bfloat16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self.fast_model(batch)
        else:
            logits = self.fast_model(batch)
        return logits.float().softmax(dim=1).cpu().numpy()

    def grad_cam(self, source: "str | os.PathLike | Image.Image") -> tuple[Image.Image, np.ndarray, int]:
        """Grad-CAM of the top class: (the network's view of the photo, heat map in [0, 1] at that size, class)."""
        view = self.preprocessing.load_view(source)
        # the view is already resized and cropped: only normalise it (array() would resize and crop it again)
        x = torch.from_numpy(normalize(view, self.preprocessing.mean, self.preprocessing.std)).unsqueeze(0)
        x = x.to(self.device)
        with torch.enable_grad():
            features = self.model.forward_features(x)  # (1, C, h, w)
            logits = self.model.forward_head(features)
            target = int(logits.argmax(1))
            gradients, = torch.autograd.grad(logits[0, target], features)
        weights = gradients.mean(dim=(2, 3), keepdim=True)  # how much each channel raises the class score
        cam = torch.relu((weights * features).sum(1, keepdim=True)).detach()
        cam = nn.functional.interpolate(cam, size=view.size[::-1], mode="bilinear", align_corners=False)[0, 0]
        cam = cam / cam.max() if cam.max() > 0 else cam
        return view, cam.cpu().numpy(), target


def _classifier_rows(state: Any) -> int | None:
    """How many classes a (possibly wrapped) state_dict's classifier has, if it can be seen."""
    if isinstance(state, dict):
        for key, value in bare_state_dict(state).items():
            if key.endswith("classifier.1.weight") and hasattr(value, "shape"):
                return int(value.shape[0])
    return None


def load(weights: str | os.PathLike, model_name: str | None = None, class_indices: str | None = None,
         device: str | torch.device | None = None, precision: str = "float32") -> TorchBackend:
    """From this project's checkpoint (everything inside it), a bare state_dict plus class names (its variant
    `model_name`, by default the one its shapes show), or "imagenet" for torchvision's ImageNet weights."""
    if is_imagenet(weights):
        model = create_model(model_name or "b0", pretrained=True)
        return TorchBackend(model, imagenet_class_names(), device=device, precision=precision,
                            origin=f"torchvision's ImageNet weights for efficientnet_{model.variant}")
    path = Path(weights)
    loaded = read_weights_file(path)
    if is_checkpoint(loaded):
        header = checkpoint_header(loaded, str(path))  # a hand-edited field is named here, with the file
        model = model_from_checkpoint(loaded)
        if header.class_names:
            found = replace_own_names(header.class_names, class_indices, str(path))
        else:  # numbered when nobody names them
            found = ClassNames(read_class_names(class_indices) if class_indices else
                               [str(i) for i in range(model.num_classes)], str(path))
        backend = TorchBackend(model, found.names, header.image, device, precision, origin=str(path))
    else:
        found = find_class_names(path, class_indices, _classifier_rows(loaded))
        if model_name is None and isinstance(loaded, dict):  # a torchvision B1 file needs no --model b1
            model_name = identify_variant(strip_wrappers(bare_state_dict(loaded)))
        model = create_model(model_name or "b0", num_classes=len(found.names))
        try:
            load_weights(model, loaded, allow_new_classifier=False, verbose=False)
        except WeightsError as error:
            raise UsageError(f"{path}: {error} (class names: {len(found.names)} from {found.origin})") from None
        backend = TorchBackend(model, found.names, device=device, precision=precision,
                               origin=f"{path} (class names from {found.origin})")
    backend.class_names_note = found.note
    return backend

#!/usr/bin/env bash
# The CUDA checks, in one call on a machine with an NVIDIA GPU (a few minutes): the GPU benchmark against
# torchvision (and timm when installed), training with AMP + channels_last, a 1-GPU NCCL run under torchrun,
# the modern recipe with EMA and mixup, evaluation, and prediction with Grad-CAM. Run from the repository with the project's requirements installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"

python -m benchmarks.speed --device cuda --sections inference training memory --rounds 10

work=$(mktemp -d)
python -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from imagegen import make_class_folders; make_class_folders(Path('$work/data'), per_class=30)"
common=(--data-path "$work/data" --weights none --freeze-layers false --epochs 3 --image-size 96 --lr 0.02
        --output-dir "$work/runs" --progress false)
python train.py "${common[@]}" --name amp --device cuda
torchrun --standalone --nproc_per_node=1 train.py "${common[@]}" --name nccl
python train.py "${common[@]}" --name compiled --device cuda --compile --epochs 1
python train.py "${common[@]}" --name modern --device cuda --recipe modern --ema --mixup-alpha 0.2
python evaluate.py "$work/data" --weights "$work/runs/amp/best.pth" --device cuda --backend torch \
    --output-dir "$work/evaluation" > /dev/null
python predict.py "$work/data/red" --weights "$work/runs/amp/best.pth" --device cuda --top-k 2 --cam \
    --save "$work/prediction.png" > /dev/null
python -c "import torch; c = torch.load('$work/runs/nccl/last.pth', weights_only=True); print('nccl run: epoch', c['epoch'], 'val acc', c['best_acc'])"
echo "gpu checks passed"
